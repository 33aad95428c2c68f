"""Cold import of every handler in a layer-only environment, with bytecode as `make build` ships it.

The layer is rebuilt here for this machine (x86_64 wheels of the exact pins in
layers/annex/requirements.txt; the deployed layer holds arm64 wheels, which cannot be imported here), the
domain package and each function's code are copied beside it, and scripts/compile_bytecode.py compiles it
exactly as `make build` does. Each figure is a fresh `python -S` process (no site-packages: only what the
layer ships is importable) timing `import app` from the function's directory. The baseline is
`import boto3` plus one client in the same environment. The same is measured without bytecode (sources
only, PYTHONDONTWRITEBYTECODE), which is what a build without the compile step ships.

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
RUNS = 7
FUNCTIONS = ["request", "heartbeat", "launch", "lease_check", "idle_reap"]
TARGET_MS = 200.0

TIMER = "import sys, time\nt = time.perf_counter()\n{body}\nprint(time.perf_counter() - t)\n"
HANDLER = "sys.path[:0] = [{fn!r}, {layer!r}]\nimport app"
BASELINE = (
    "sys.path[:0] = [{layer!r}]\nimport boto3\n"
    "boto3.session.Session().client('dynamodb', region_name='us-east-1')"
)


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


def timed(body: str, *, bytecode: bool) -> list[float]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "POWERTOOLS_SERVICE_NAME": "annex",
        "POWERTOOLS_TRACE_DISABLED": "1",
    }
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
        out.append(float(res.stdout.strip()) * 1000)
    return out


def line(label: str, figures: list[float], baseline: float) -> str:
    med = statistics.median(figures)
    return f"  {label:<22} min {min(figures):6.1f} ms  median {med:6.1f} ms  ({med / baseline:.2f}x baseline)"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="annex-coldstart-") as tmp:
        root = Path(tmp)
        layer = build_layer(root)
        results: dict[str, dict[str, list[float]]] = {"bytecode": {}, "source only": {}}
        for mode in ("source only", "bytecode"):
            if mode == "bytecode":
                compile_bytecode(root)
            results[mode]["baseline"] = timed(BASELINE.format(layer=str(layer)), bytecode=mode == "bytecode")
            for name in FUNCTIONS:
                body = HANDLER.format(fn=str(root / name), layer=str(layer))
                results[mode][name] = timed(body, bytecode=mode == "bytecode")
    print(
        f"cold import per handler, layer-only environment, {RUNS} fresh processes each (python {sys.version.split()[0]})"
    )
    for mode, figures in results.items():
        base = statistics.median(figures["baseline"])
        print(f"{mode}:")
        print(line("import boto3 + client", figures["baseline"], base))
        for name in FUNCTIONS:
            print(line(name, figures[name], base))
    shipped = results["bytecode"]
    worst = max(FUNCTIONS, key=lambda n: statistics.median(shipped[n]))
    worst_ms = statistics.median(shipped[worst])
    slow = statistics.median(results["source only"][worst]) / worst_ms
    print(f"without bytecode the slowest handler ({worst}) imports {slow:.1f}x slower")
    print(
        f"slowest handler as shipped: {worst} {worst_ms:.0f} ms median ({worst_ms / TARGET_MS:.2f}x the {TARGET_MS:.0f} ms target)"
    )


if __name__ == "__main__":
    main()
