"""annex-client shorten and set-idle: what they send and what they say."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from annex_client import commands
from annex_client.cli import main

from tests.unit.client_fakes import Wire, annex

AX = "ax-0123456789abcdef"
NOW = datetime(2026, 11, 22, 16, 0, 0, tzinfo=UTC)  # the fake annex's lease ends 18:00


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def at_now(monkeypatch):
    monkeypatch.setattr(commands, "_now", lambda: NOW)


def test_shorten_to_sends_the_duration_and_says_when_the_lease_ends(capsys, monkeypatch, at_now):
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, annex()))
    wire.on("POST", f"/annexes/{AX}/shorten", (200, annex(lease_expires_at="2026-11-22T16:30:00Z")))
    code, out, _ = run(capsys, "shorten", AX, "--to", "30m")
    assert code == 0
    assert wire.calls[-1].body == {"to": "30m"}
    assert "now ends" in out


def test_shorten_until_sends_the_time(capsys, monkeypatch, at_now):
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, annex()))
    wire.on("POST", f"/annexes/{AX}/shorten", (200, annex(lease_expires_at="2026-11-22T17:00:00Z")))
    code, _, _ = run(capsys, "shorten", AX, "--until", "2026-11-22T17:00:00Z")
    assert code == 0
    assert wire.calls[-1].body == {"until": "2026-11-22T17:00:00Z"}


def test_set_idle_sends_the_timeout_and_says_when_instances_learn_it(capsys, monkeypatch, at_now):
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, annex()))
    wire.on("POST", f"/annexes/{AX}/idle-timeout", (200, annex(idle_timeout_seconds=1800)))
    code, out, _ = run(capsys, "set-idle", AX, "30m")
    assert code == 0
    assert wire.calls[-1].body == {"idle_timeout": "30m"}
    assert "is now 30m" in out
    assert "next heartbeat" in out


@pytest.mark.parametrize(("argv"), [("shorten", AX, "--to", "30m"), ("set-idle", AX, "30m")])
def test_an_ended_annex_is_refused_without_calling_the_api(capsys, monkeypatch, argv):
    ended = annex(state="ended", end_reason="stopped", instances=[], history=[])
    wire = Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, ended))
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert "ended annex cannot be" in err
    assert wire.paths("POST") == []
