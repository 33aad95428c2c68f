"""The heartbeat's cold start, the hottest one (1,000 instances booting together start many functions at
once): its handler module, imported as Lambda imports it, loads neither Powertools' event handler (the
router and its OpenAPI machinery) nor what only a rare heartbeat needs. bench/bench_coldstart.py measures
what it costs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_AT_COLD_START = (
    "aws_lambda_powertools.event_handler",  # the router: the heartbeat has one route and its own adapter
    "annex.api.http",  # the request API's Powertools glue
    "annex.failsafe.interruption",  # only a heartbeat that brings a new spot notice records it
)
PROBE = (
    "import json, sys\nsys.path[:0] = [{fn!r}, {layer!r}]\nimport app\nprint(json.dumps(sorted(sys.modules)))"
)


def test_the_heartbeat_handler_loads_no_router_and_no_branch_only_module():
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "AWS_")) and k != "PYTHONPATH"
    }
    function = ROOT / "functions" / "heartbeat"
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="heartbeat",
        LAMBDA_TASK_ROOT=str(function),
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_SERVICE_NAME="annex",
    )
    probe = PROBE.format(fn=str(function), layer=str(ROOT / "layers" / "annex"))
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    loaded = set(json.loads(res.stdout.splitlines()[-1]))
    assert {"app", "annex.api.gate", "annex.api.answers", "aws_lambda_powertools.logging"} <= loaded
    assert not [m for m in NOT_AT_COLD_START if m in loaded], sorted(m for m in loaded if "annex" in m)
