"""`annex-client status`: the API pages an annex's history (newest first); status shows the newest page
and says how to see the rest, `--history all` reads every page."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
from annex_client import commands
from annex_client.cli import main

from tests.unit.client_fakes import Wire, annex

AX = "ax-0123456789abcdef"


def event(minute: int, action: str = "extended") -> dict[str, str]:
    return {
        "at": f"2026-11-22T14:{minute:02d}:00Z",
        "actor": "alice",
        "action": action,
        "detail": f"m{minute}",
    }


@pytest.fixture(autouse=True)
def at_now(monkeypatch):
    monkeypatch.setattr(commands, "_now", lambda: datetime(2026, 11, 22, 16, 0, tzinfo=UTC))


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def paged(monkeypatch) -> Wire:
    first = annex(state="running", history=[event(59), event(58)], history_next_token="tok-1")
    second = annex(state="running", history=[event(57), event(0, "requested")], history_next_token=None)
    return Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, first), (200, second))


def test_status_shows_the_newest_page_and_says_how_to_see_the_rest(capsys, monkeypatch):
    wire = paged(monkeypatch)
    code, out = run(capsys, "status", AX)
    assert code == 0
    assert "m59" in out
    assert "m58" in out
    assert "m57" not in out
    assert f"annex-client status {AX} --history all" in out
    assert len(wire.paths("GET")) == 1


def test_history_all_reads_every_page_with_the_token_and_shows_them_oldest_first(capsys, monkeypatch):
    wire = paged(monkeypatch)
    code, out = run(capsys, "status", AX, "--history", "all")
    assert code == 0
    assert [parse_qs(c.query).get("history_next_token") for c in wire.calls] == [None, ["tok-1"]]
    lines = [line for line in out.splitlines() if " m" in line or "requested" in line]
    order = [next(tag for tag in ("m0", "m57", "m58", "m59") if tag in line) for line in lines]
    assert order == ["m0", "m57", "m58", "m59"]
    assert "--history all" not in out


def test_events_within_one_second_are_shown_in_the_order_they_happened(capsys, monkeypatch):
    # newest first from the API: "running" was recorded after "launching", in the same second
    same_second = "2026-11-22T14:01:00Z"
    history = [
        {"at": same_second, "actor": "launch", "action": "running", "detail": "3 of 3 launched"},
        {"at": same_second, "actor": "launch", "action": "launching", "detail": "launching 3"},
        event(0, "requested"),
    ]
    Wire.install(monkeypatch).on("GET", f"/annexes/{AX}", (200, annex(state="running", history=history)))
    code, out = run(capsys, "status", AX)
    assert code == 0
    assert out.index("m0") < out.index("launching 3") < out.index("3 of 3 launched")
