"""The client runs on Python 3.9 (laptops, pool head nodes). mypy cannot target 3.9 any more, so this runs
the client's pure parts under a real 3.9 interpreter when one is installed."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"


def python39() -> str | None:
    candidates = [
        shutil.which("python3.9"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9"))),
    ]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


PY39 = python39()

SCRIPT = """
import contextlib, io, pkgutil, importlib
from datetime import datetime, timedelta, timezone
import annex_client
modules = sorted(m.name for m in pkgutil.iter_modules(annex_client.__path__))
for name in modules:
    importlib.import_module("annex_client." + name)
from annex_client import cli, render, pricing, settings, timefmt, errors
with contextlib.redirect_stdout(io.StringIO()) as out:
    assert cli.main(["--help"]) == 0
    assert cli.main(["request", "--help"]) == 0
assert "exit codes" in out.getvalue()
assert timefmt.parse_duration("1h30m") == timedelta(minutes=90)
assert timefmt.parse_time("2026-11-22T18:00:00Z") == datetime(2026, 11, 22, 18, tzinfo=timezone.utc)
now = datetime(2026, 11, 22, 14, 48, tzinfo=timezone.utc)
detail = {"id": "ax-0123456789abcdef", "name": "bio", "owner": "arn:aws:iam::123456789012:user/alice",
          "state": "running", "count": 1, "launched_count": 1, "instance_types": ["c7i.xlarge"],
          "market": "on-demand", "lease_expires_at": "2026-11-22T18:00:00Z", "idle_timeout_seconds": 900,
          "created_at": "2026-11-22T14:00:00Z",
          "instances": [{"instance_id": "i-0aaaaaaaaaaaaaaa1", "instance_type": "c7i.xlarge",
                         "state": "running", "market": "on-demand",
                         "last_heartbeat_at": "2026-11-22T14:47:48Z", "claimed_slots": 2, "total_slots": 4}],
          "history": [{"at": "2026-11-22T14:00:00Z", "actor": "x", "action": "requested", "detail": ""}]}
text = render.status_text(detail, now, timezone.utc)
assert "busy 2/4" in text and "in 3h12m" in text, text
q = {"adds_usd": "0.71", "price": {"usd_per_hour": "0.1785", "source": "snapshot", "as_of": "2024-01-01"}}
assert pricing.estimate(q, 2, 2.0, spot=False).usd is not None
url = "https://a1.execute-api.eu-west-1.amazonaws.com/v1"
s = settings.resolve(endpoint=url, profile=None, region=None, environ={})
assert s.region == "eu-west-1"
assert errors.Refused("x", fields=[{"field": "lease", "reason": "too long"}]).line() == "--lease: too long"
print("ok", len(modules))
"""


@pytest.mark.skipif(PY39 is None, reason="no Python 3.9 interpreter on this machine")
def test_the_client_imports_parses_and_renders_on_python_3_9():
    env = {**os.environ, "PYTHONPATH": str(CLIENT_DIR), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([str(PY39), "-c", SCRIPT], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")
    assert int(proc.stdout.split()[1]) >= 9  # every module was imported
