"""Cold import of every handler in a layer-only environment, with bytecode as `make build` ships it.

The layer is rebuilt here for this machine (x86_64 wheels of the exact pins in
layers/annex/requirements.txt; the deployed layer holds arm64 wheels, which cannot be imported here), the
domain package and each function's code are copied beside it, and scripts/compile_bytecode.py compiles it
exactly as `make build` does. Each figure is a fresh `python -S` process (no site-packages: only what the
layer ships is importable) timing `import app` from the function's directory. The baseline is
`import boto3` plus one client in the same environment. The same is measured without bytecode (sources
only, PYTHONDONTWRITEBYTECODE), which is what a build without the compile step ships.

Every function of template.yaml is measured, in the environment Lambda gives it: LAMBDA_TASK_ROOT set,
and tracing as the template says (a function with `Tracing: Active` has an enabled Powertools Tracer, which
imports the X-Ray SDK and patches botocore at import; POWERTOOLS_TRACE_DISABLED is never set). Wall time is
what a cold start costs on an idle machine; on a shared, loaded one it grows with the load, so the CPU time
of the importing process is printed beside it (the ratio to the baseline is comparable in both).

Prints figures and ratios; asserts nothing about speed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "local")]

from annex_local.template import functions, load_template  # noqa: E402

RUNS = 7
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


def handler_functions() -> dict[str, bool]:
    """Each function's code directory name -> whether it traces (`Tracing: Active`, its own or Globals')."""
    default = load_template().get("Globals", {}).get("Function", {}).get("Tracing", "PassThrough")
    out = {}
    for spec in functions().values():
        props = spec["Properties"]
        out[Path(str(props["CodeUri"])).name] = props.get("Tracing", default) == "Active"
    return dict(sorted(out.items()))


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


def timed(body: str, *, bytecode: bool, task_root: Path | None = None) -> list[tuple[float, float]]:
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
    load = os.getloadavg()[0]
    print(
        f"cold import per handler, layer-only environment, {RUNS} fresh processes each "
        f"(python {sys.version.split()[0]}, load average {load:.1f} on {os.cpu_count()} CPUs)"
    )
    for mode, figures in results.items():
        print(f"{mode}:")
        print(line("import boto3 + client", figures["baseline"], figures["baseline"]))
        for name, traces in FUNCTIONS.items():
            print(line(name + (" (traced)" if traces else ""), figures[name], figures["baseline"]))
    shipped = results["bytecode"]
    worst = max(FUNCTIONS, key=lambda n: median(shipped[n]))
    worst_ms = median(shipped[worst])
    slow = median(results["source only"][worst]) / worst_ms
    print(f"without bytecode the slowest handler ({worst}) imports {slow:.1f}x slower")
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
