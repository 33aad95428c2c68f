"""What a cold start imports, and how: each handler module, imported as Lambda imports it
(LAMBDA_TASK_ROOT and AWS_LAMBDA_FUNCTION_NAME set, tracing not disabled), pulls in none of the packages
the cold path was cut free of, and loads with the cyclic garbage collector paused (annex.coldstart).
bench/bench_coldstart.py measures what the handlers cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from annex_local.template import functions

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = sorted({Path(str(f["Properties"]["CodeUri"])).name for f in functions().values()})
# Not imported at cold start by any handler:
UNWANTED = (
    "aws_xray_sdk",  # Powertools' Tracer (AWS put the X-Ray SDKs in maintenance mode)
    # every Powertools event model (the stream functions import the batch utility before pydantic for it)
    "aws_lambda_powertools.utilities.parser.models",
    "boto3",  # clients come from botocore sessions
    "s3transfer",
)
PROBE = (
    "import json, sys\n"
    "sys.path[:0] = [{fn!r}, {layer!r}]\n"
    "import app\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {tops!r})))"
)


# Nor by the stream functions, which answer partial batches with annex.aws.batch: Powertools' batch
# utility imports every event data class and asyncio (~40 ms). Nor by launch, what only some of its
# invocations need: the spot replacer (with money.service) and the termination path (~11 + ~2.5 ms).
BATCH_UTILITY = (
    "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.data_classes",
    "asyncio",
)
STREAM_UNWANTED = {
    "launch": (*BATCH_UTILITY, "annex.launch.replace", "annex.failsafe.termination"),
    "notices": BATCH_UTILITY,
}


def cold_imports(code_dir: str, unwanted: tuple[str, ...]) -> set[str]:
    """The modules of `unwanted`'s top-level packages that importing the handler loads."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "AWS_")) and k != "PYTHONPATH"
    }
    env.update(
        AWS_LAMBDA_FUNCTION_NAME=code_dir,
        LAMBDA_TASK_ROOT=str(ROOT / "functions" / code_dir),
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_SERVICE_NAME="annex",
    )
    tops = sorted({m.split(".")[0] for m in unwanted})
    probe = PROBE.format(
        fn=str(ROOT / "functions" / code_dir), layer=str(ROOT / "layers" / "annex"), tops=tops
    )
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout.splitlines()[-1]))


@pytest.mark.parametrize("code_dir", CODE_DIRS)
def test_a_handler_imports_none_of_the_cut_packages(code_dir: str):
    loaded = cold_imports(code_dir, UNWANTED)
    assert not [m for m in UNWANTED if m in loaded], f"{code_dir} imports {sorted(loaded)}"


@pytest.mark.parametrize("code_dir", sorted(STREAM_UNWANTED))
def test_a_stream_function_imports_no_batch_utility_nor_what_few_invocations_need(code_dir: str):
    unwanted = STREAM_UNWANTED[code_dir]
    loaded = cold_imports(code_dir, unwanted)
    assert not [m for m in unwanted if m in loaded], f"{code_dir} imports {sorted(loaded)}"


def test_the_probe_sees_the_packages_it_looks_for():
    # The dev venv has them all (moto needs the X-Ray SDK and boto3): their absence above is the handlers'.
    probe = "import aws_xray_sdk.core, boto3, s3transfer, aws_lambda_powertools.utilities.parser.models"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


GC_PROBE = (
    "import gc, json, sys\n"
    "sys.path[:0] = [{fn!r}, {layer!r}]\n"
    "heavy = {{'botocore', 'pydantic', 'pydantic_core', 'aws_lambda_powertools'}}\n"
    "seen = {{}}\n"
    "class Spy:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name in heavy and name not in seen:\n"
    "            seen[name] = gc.isenabled()\n"
    "sys.meta_path.insert(0, Spy())\n"
    "import app\n"
    "print(json.dumps({{'seen': seen, 'after': gc.isenabled(), 'frozen': gc.get_freeze_count()}}))"
)


@pytest.mark.parametrize("code_dir", CODE_DIRS)
def test_a_handler_loads_with_the_collector_paused_and_hands_it_back(code_dir: str):
    # annex.coldstart: no cyclic-GC passes over the modules a cold start loads; afterwards the collector
    # runs again and what was loaded is frozen out of the invocations' collections.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LAMBDA_TASK_ROOT=str(ROOT / "functions" / code_dir), AWS_DEFAULT_REGION="us-east-1")
    probe = GC_PROBE.format(fn=str(ROOT / "functions" / code_dir), layer=str(ROOT / "layers" / "annex"))
    res = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    state = json.loads(res.stdout.splitlines()[-1])
    assert {"botocore", "pydantic"} <= set(state["seen"]), state
    assert not [name for name, enabled in state["seen"].items() if enabled], f"collector ran: {state}"
    assert state["after"] is True, "the collector was not handed back"
    assert state["frozen"] > 10_000, "what the import loaded was not frozen"
