"""Cold import of every handler in a layer-only environment, with bytecode as `make build` ships it.

The layer is rebuilt here for this machine (x86_64 wheels of the exact pins in
layers/annex/requirements.txt; the deployed layer holds arm64 wheels, which cannot be imported here), the
domain package and each function's code are copied beside it, and scripts/compile_bytecode.py compiles it
exactly as `make build` does. Each figure is a fresh `python -S` process (no site-packages: only what the
layer ships is importable) timing `import app` from the function's directory. The baseline is
`import boto3` plus one client in the same environment. The same is measured without bytecode (sources
only, PYTHONDONTWRITEBYTECODE), which is what a build without the compile step ships.

Each handler imports as shipped: the cyclic garbage collector paused while its modules load, then the
loaded objects frozen (annex.coldstart); the baseline is plain `import boto3` + one client, as any Python
function would start.

Every function of template.yaml is measured, in the environment Lambda gives it: LAMBDA_TASK_ROOT set,
POWERTOOLS_TRACE_DISABLED never set (no handler has a Powertools Tracer any more: `Tracing: Active` is
Lambda's own segments, which need no SDK in the function). Wall time is what a cold start costs on an idle
machine; on a shared, loaded one it grows with the load, so the CPU time of the importing process is
printed beside it (the ratio to the baseline is comparable in both).

Honesty column: an import deferred into the first invocation only moves cold-start cost. So each handler is
also measured doing `import app` plus one first invocation of a representative event (the events/ files,
or one built like them), in the same layer-only process, against the local stack's embedded AWS (moto
server on 127.0.0.1, the template's table and parameters): settings read, clients made, the first calls
sent and answered, models built and validated. Its CPU time (the handler process only, not moto's) is
printed beside `import boto3` + one client + one DynamoDB GetItem. A handler whose first invocation raises
is marked so (the prices function: moto has no Price List API).

Prints figures and ratios; asserts nothing about speed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]

from annex_local.template import functions  # noqa: E402

RUNS = int(os.environ.get("COLDSTART_RUNS", "7"))  # fewer for a quick look
RAISED: set[str] = set()  # exception names a timed body reported (reset per measurement)
TARGET_MS = 200.0
# `import boto3` + one client on an idle machine, measured here with this bench before the cuts (issue 13).
BASELINE_IDLE_MS = 176.0

TIMER = (
    "import sys, time\nt, c = time.perf_counter(), time.process_time()\n{body}\n"
    "print(time.perf_counter() - t, time.process_time() - c)\n"
)
HANDLER = "sys.path[:0] = [{fn!r}, {layer!r}]\nimport app"
BASELINE = (
    "sys.path[:0] = [{layer!r}]\nimport boto3\n"
    "boto3.session.Session().client('dynamodb', region_name='us-east-1')"
)
FIRST_CALL = """sys.path[:0] = [{fn!r}, {layer!r}]
import json
import app
class Context:
    function_name = {name!r}
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + {name!r}
    aws_request_id = "00000000-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/" + {name!r}
    log_stream_name = "bench"
    def get_remaining_time_in_millis(self):
        return 30000
try:
    app.handler(json.loads({event!r}), Context())
except Exception as exc:
    print("RAISED", type(exc).__name__, file=sys.stderr)"""
BASELINE_CALL = (
    "sys.path[:0] = [{layer!r}]\nimport boto3\n"
    "client = boto3.session.Session().client('dynamodb', region_name='us-east-1')\n"
    "client.get_item(TableName={table!r}, Key={{'pk': {{'S': 'bench'}}, 'sk': {{'S': 'bench'}}}})"
)


def handler_functions() -> list[str]:
    """Each function's code directory name."""
    return sorted({Path(str(spec["Properties"]["CodeUri"])).name for spec in functions().values()})


FUNCTIONS = handler_functions()


def build_layer(dest: Path) -> Path:
    layer = dest / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "--target",
            str(layer),
            "-r",
            str(ROOT / "layers" / "annex" / "requirements.txt"),
        ],
        check=True,
    )
    shutil.copytree(
        ROOT / "layers" / "annex" / "annex", layer / "annex", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in FUNCTIONS:
        shutil.copytree(ROOT / "functions" / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return layer


def compile_bytecode(root: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "compile_bytecode.py"), str(root)], check=True)


def representative_events(instance_role: str) -> dict[str, dict[str, Any]]:
    """One event per function code directory: what its trigger delivers on an ordinary day (the
    heartbeat signed by the stack's instance role, so it reaches the store)."""
    from annex_local.events import rest_event
    from annex_local.stack import USERS

    def load(name: str) -> dict[str, Any]:
        return dict(json.loads((ROOT / "events" / name).read_text()))

    ended = load("launch-modify-running.json")
    change = ended["Records"][0]["dynamodb"]
    change["OldImage"] = dict(change["NewImage"])
    change["NewImage"] = {**change["NewImage"], "state": {"S": "ended"}, "end_reason": {"S": "stopped"}}
    timer = {"annex_id": "ax-5e1f0c2a9b3d4e6f", "expires_at": "2026-11-22T18:00:00+00:00"}
    warning = load("spot-interruption-warning.json")
    heartbeat = load("heartbeat-ok.json")
    iam = heartbeat["requestContext"]["authorizer"]["iam"]
    iam["userArn"] = f"arn:aws:sts::123456789012:assumed-role/{instance_role}/{iam['userId']}"
    return {
        "heartbeat": heartbeat,
        "idle_reap": load("idle-reap-schedule.json"),
        "interruption": warning,  # EventBridge invokes the function with the event itself
        "launch": load("launch-insert.json"),
        "lease_check": load("lease-check-schedule.json"),
        "lease_timer": {"Records": [{"messageId": "m-1", "body": json.dumps(timer)}]},
        "notices": ended,
        "prices": load("prices-schedule.json"),
        "request": rest_event("GET", "/annexes", caller_arn=USERS["alice"]),
    }


def timed(
    body: str, *, bytecode: bool, task_root: Path | None = None, stack_env: dict[str, str] | None = None
) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of `body` in RUNS fresh processes."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "POWERTOOLS_SERVICE_NAME": "annex",
    }
    if task_root is not None:
        env["LAMBDA_TASK_ROOT"] = str(task_root)
        env["AWS_LAMBDA_FUNCTION_NAME"] = task_root.name
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(stack_env or {})
    out = []
    for _ in range(RUNS):
        res = subprocess.run(
            [sys.executable, "-S", "-c", TIMER.format(body=body)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise SystemExit(f"import failed:\n{res.stderr[-2000:]}")
        if "RAISED " in res.stderr:
            RAISED.add(res.stderr.split("RAISED ", 1)[1].split()[0])
        wall, cpu = res.stdout.split()[-2:]
        out.append((float(wall) * 1000, float(cpu) * 1000))
    return out


def median(figures: list[tuple[float, float]], which: int = 0) -> float:
    return statistics.median(f[which] for f in figures)


def line(label: str, figures: list[tuple[float, float]], baseline: list[tuple[float, float]]) -> str:
    wall, cpu = median(figures, 0), median(figures, 1)
    return (
        f"  {label:<26} wall min {min(f[0] for f in figures):6.1f} ms  median {wall:6.1f} ms"
        f" ({wall / median(baseline, 0):.2f}x)   cpu median {cpu:6.1f} ms ({cpu / median(baseline, 1):.2f}x)"
    )


def first_calls(root: Path, layer: Path) -> dict[str, tuple[list[tuple[float, float]], set[str]]]:
    """Import + one first invocation per handler (bytecode as shipped), against the local stack's AWS."""
    from annex_local.runtime import install_code_paths

    install_code_paths()  # the local stack runs the functions in this process too
    from annex_local.stack import LocalStack, Options

    out: dict[str, tuple[list[tuple[float, float]], set[str]]] = {}
    before = dict(os.environ)
    stack = LocalStack(Options(state_dir=root / "state", sweep_period=3600.0, heartbeat_period=3600.0))
    # The stack's own sweeps run in this process and log to stdout: not part of the report.
    with contextlib.redirect_stdout(io.StringIO()), stack:
        # moto answers the prices function's Price List calls with a traceback (it has no such API).
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        stack_env = {k: v for k, v in os.environ.items() if before.get(k) != v}
        stack_env.pop("POWERTOOLS_TRACE_DISABLED", None)  # as deployed
        events = representative_events(stack_env["INSTANCE_ROLE_NAME"])
        assert set(events) == set(FUNCTIONS), "an event per function"
        RAISED.clear()
        call = BASELINE_CALL.format(layer=str(layer), table=stack_env["TABLE_NAME"])
        out["baseline"] = (timed(call, bytecode=True, stack_env=stack_env), set(RAISED))
        for name in FUNCTIONS:
            RAISED.clear()
            body = FIRST_CALL.format(
                fn=str(root / name), layer=str(layer), name=name, event=json.dumps(events[name])
            )
            env = {**stack_env, "AWS_LAMBDA_FUNCTION_NAME": name}
            out[name] = (timed(body, bytecode=True, task_root=root / name, stack_env=env), set(RAISED))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="annex-coldstart-") as tmp:
        root = Path(tmp)
        layer = build_layer(root)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {"bytecode": {}, "source only": {}}
        for mode in ("source only", "bytecode"):
            if mode == "bytecode":
                compile_bytecode(root)
            results[mode]["baseline"] = timed(BASELINE.format(layer=str(layer)), bytecode=mode == "bytecode")
            for name in FUNCTIONS:
                body = HANDLER.format(fn=str(root / name), layer=str(layer))
                results[mode][name] = timed(body, bytecode=mode == "bytecode", task_root=root / name)
        calls = first_calls(root, layer)
    load = os.getloadavg()[0]
    print(
        f"cold import per handler, layer-only environment, {RUNS} fresh processes each "
        f"(python {sys.version.split()[0]}, load average {load:.1f} on {os.cpu_count()} CPUs)"
    )
    for mode, figures in results.items():
        print(f"{mode}:")
        print(line("import boto3 + client", figures["baseline"], figures["baseline"]))
        for name in FUNCTIONS:
            print(line(name, figures[name], figures["baseline"]))
    shipped = results["bytecode"]
    worst = max(FUNCTIONS, key=lambda n: median(shipped[n]))
    worst_ms = median(shipped[worst])
    slow = median(results["source only"][worst]) / worst_ms
    print(f"without bytecode the slowest handler ({worst}) imports {slow:.1f}x slower")
    base_import, base_call = median(shipped["baseline"], 1), median(calls["baseline"][0], 1)
    print(
        "import + one first invocation (bytecode, local stack's AWS), CPU median of the handler process:"
        f" baseline import boto3 + client + one GetItem {base_call:.1f} ms"
    )
    for name in FUNCTIONS:
        call_figures, raised = calls[name]
        imp, first = median(shipped[name], 1), median(call_figures, 1)
        note = f"  (raised {', '.join(sorted(raised))})" if raised else ""
        print(
            f"  {name:<14} import {imp:6.1f} ms ({imp / base_import:.2f}x)"
            f"   import + first call {first:6.1f} ms ({first / base_call:.2f}x){note}"
        )
    # The target is wall time on an idle machine; on a loaded one, judge by the ratio to the baseline.
    for label, which in (("wall", 0), ("cpu", 1)):
        base = median(shipped["baseline"], which)
        within = [n for n in FUNCTIONS if median(shipped[n], which) / base * BASELINE_IDLE_MS <= TARGET_MS]
        print(
            f"{label}: {len(within)} of {len(FUNCTIONS)} handlers within {TARGET_MS:.0f} ms when the baseline "
            f"takes its idle {BASELINE_IDLE_MS:.0f} ms: {', '.join(within) or 'none'}"
        )
    print(
        f"slowest handler as shipped: {worst} {worst_ms:.0f} ms median "
        f"({worst_ms / median(shipped['baseline']):.2f}x the baseline)"
    )


if __name__ == "__main__":
    main()
