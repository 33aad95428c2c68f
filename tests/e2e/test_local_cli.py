"""`annex-local` as a researcher meets it: the README's block pasted as is, `up --detach` / `status` /
`down`, a quiet terminal, bad parameters refused at `up`, and a killed stack's stale state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MARKER = "<!-- local-stack-block:"


def readme_block() -> str:
    """The shell block that follows the marker in README.md, exactly as written there."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert match, "README.md: no ```sh block after the local-stack marker"
    return match.group(1)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANNEX_"))}


def local(*args: str, cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "annex-local"), *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A directory laid out like a clone for the README's relative paths (.venv/bin/...), whose stack is
    always stopped afterwards."""
    (tmp_path / ".venv").symlink_to(BIN.parent)
    yield tmp_path
    for state in (tmp_path / ".annex-local", tmp_path / "st"):
        if (state / "lock").exists():
            local("down", "--state-dir", str(state), cwd=tmp_path)


def test_the_readme_block_runs_verbatim(workdir: Path) -> None:
    # Given the README's local-stack block, exactly as a new user would paste it
    block = readme_block()
    assert "annex-local up" in block
    assert "annex-local down" in block

    # When bash runs it, stopping at the first failing line
    done = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=workdir,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    # Then every line succeeded: the annex was requested and reported, the administrator lists it,
    # and the stack is down again with no env left behind
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "instances joined the pool" in done.stdout or "report to the pool" in done.stdout, done.stdout
    assert re.search(r"^try\s+alice\s+ax-[0-9a-f]{16}\s+running", done.stdout, re.MULTILINE), done.stdout
    assert "annex-local stopped." in done.stdout
    assert not (workdir / ".annex-local" / "env").exists()
    assert local("status", cwd=workdir).returncode == 1


def test_detach_status_down_and_a_quiet_terminal(workdir: Path) -> None:
    # Given a detached stack
    up = local("up", "--fast", "--detach", "--state-dir", "st", cwd=workdir)
    assert up.returncode == 0, up.stderr
    env = dict(line.split("=", 1) for line in (workdir / "st" / "env").read_text().splitlines())
    assert env["ANNEX_ENDPOINT"] in up.stdout

    # When a researcher uses it
    client = subprocess.run(
        [str(BIN / "annex-client"), "request", "quiet", "--count", "1", "--lease", "5m", "--yes", "--wait"],
        env={**clean_env(), **env, "AWS_PROFILE": "alice"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert client.returncode == 0, client.stderr

    # Then `up` printed only its short banner (no JSON log lines), the log file has the functions' logs,
    # and status says where it runs
    assert len(up.stdout.splitlines()) <= 10, up.stdout
    assert "{" not in up.stdout, up.stdout
    assert up.stderr == ""
    logged = (workdir / "st" / "annex-local.log").read_text().splitlines()
    records = [json.loads(line) for line in logged if line.startswith("{") and '"level"' in line]
    assert any(r.get("service") == "annex" for r in records), logged[-20:]
    status = local("status", "--state-dir", "st", cwd=workdir)
    assert status.returncode == 0
    assert env["ANNEX_ENDPOINT"] in status.stdout

    # And a second `up` on the same state directory is refused, naming the running one
    again = local("up", "--fast", "--detach", "--state-dir", "st", cwd=workdir)
    assert again.returncode == 1
    assert "already running" in again.stderr

    # When it is brought down, it has stopped when `down` returns
    down = local("down", "--state-dir", "st", cwd=workdir)
    assert down.returncode == 0, down.stderr
    assert not (workdir / "st" / "env").exists()
    assert local("status", "--state-dir", "st", cwd=workdir).returncode == 1

    # And the stack's own log lines (each request, readiness, shutdown) are in the file, next to the
    # functions' JSON logs
    log = (workdir / "st" / "annex-local.log").read_text()
    assert " annex_local INFO ready: API " in log
    assert " annex_local.gateway INFO POST /v1/annexes -> 201 " in log
    assert log.rstrip().endswith("annex_local INFO stopped")


def test_a_foreground_stack_keeps_the_terminal_quiet(workdir: Path) -> None:
    # Given `annex-local up --fast` in the foreground, its terminal captured
    proc = subprocess.Popen(
        [str(BIN / "annex-local"), "up", "--fast", "--state-dir", "st"],
        cwd=workdir,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (workdir / "st" / "env").exists():
            assert proc.poll() is None, "annex-local exited"
            assert time.monotonic() < deadline, "annex-local did not start"
            time.sleep(0.2)
        env = dict(line.split("=", 1) for line in (workdir / "st" / "env").read_text().splitlines())
        # When the sweeps run and a researcher requests an annex
        done = subprocess.run(
            [str(BIN / "annex-client"), "request", "fg", "--count", "1", "--lease", "5m", "--yes", "--wait"],
            env={**clean_env(), **env, "AWS_PROFILE": "alice"},
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        time.sleep(6)  # at least one more sweep
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    # Then the terminal saw the banner and the goodbye, nothing else
    assert proc.returncode == 0, err
    assert "annex-local is up." in out
    assert out.rstrip().endswith("annex-local stopped.")
    assert len(out.splitlines()) <= 11, out
    assert "{" not in out, out
    assert err == "", err


@pytest.mark.parametrize(
    ("param", "named"),
    [
        ("MaxLiveInstancesPerOwner=abc", ["MaxLiveInstancesPerOwner=abc", "integer"]),
        ("MaxLiveInstancesPerOwner=10", ["MaxInstancesPerAnnex", "MaxLiveInstancesPerOwner=10", "exceed"]),
    ],
)
def test_bad_params_are_refused_at_up_naming_them(workdir: Path, param: str, named: list[str]) -> None:
    # When `up --detach` is given a parameter the functions would refuse at cold start
    done = local("up", "--fast", "--detach", "--state-dir", "st", "--param", param, cwd=workdir)

    # Then it refuses to start (exit 2), naming the parameter and the reason, and nothing runs
    assert done.returncode == 2, done.stdout + done.stderr
    for word in named:
        assert word in done.stderr, done.stderr
    assert "refusing to start" in done.stderr
    assert not (workdir / "st" / "env").exists()
    assert local("status", "--state-dir", "st", cwd=workdir).returncode == 1


def test_a_killed_stack_is_detected_on_the_next_up(workdir: Path) -> None:
    # Given a stack killed without a chance to clean up
    assert local("up", "--fast", "--detach", "--state-dir", "st", cwd=workdir).returncode == 0
    pid = int((workdir / "st" / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while local("status", "--state-dir", "st", cwd=workdir).returncode == 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert (workdir / "st" / "env").exists()  # stale

    # When the next `up` runs
    again = local("up", "--fast", "--detach", "--state-dir", "st", cwd=workdir)

    # Then it says the old stack's state is stale and lost, and starts a fresh one
    assert again.returncode == 0, again.stderr
    assert "did not stop cleanly" in again.stderr
    assert "gone" in again.stderr
    assert int((workdir / "st" / "pid").read_text()) != pid
    assert local("down", "--state-dir", "st", cwd=workdir).returncode == 0
