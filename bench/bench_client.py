"""annex-client start-up: `annex-client --help` in fresh processes against the 200 ms target, the import
time of the CLI module, and what the lazy import of botocore saves.

Run: .venv/bin/python bench/bench_client.py [--runs N] [--client PATH/TO/annex-client]
(--client measures another installation, such as one in a Python 3.9 virtualenv; its interpreter is the
`python` next to it.)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_MS = 200.0


def wall_ms(cmd: list[str], runs: int) -> list[float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache once
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        out.append((time.perf_counter() - start) * 1000)
    return out


def import_ms(python: str, module_code: str, top: str, runs: int) -> list[float]:
    """Cumulative import time of the top-level imports of package `top` (its own lines, not nested under
    another module) as python -X importtime reports them (microseconds -> ms)."""
    pattern = re.compile(rf"import time:\s+\d+ \|\s+(\d+) \| {re.escape(top)}(?:\.\S+)?$")
    out = []
    for _ in range(runs):
        proc = subprocess.run(
            [python, "-X", "importtime", "-c", module_code], capture_output=True, text=True, check=True
        )
        total = sum(int(m.group(1)) for line in proc.stderr.splitlines() if (m := pattern.search(line)))
        out.append(total / 1000)
    return out


def summary(values: list[float]) -> str:
    return (
        f"min {min(values):6.1f} ms   median {statistics.median(values):6.1f} ms   max {max(values):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--client", type=Path, default=Path(sys.executable).with_name("annex-client"))
    opts = parser.parse_args()
    runs, client = opts.runs, opts.client
    if not client.exists():
        sys.exit(f"{client} not found: run `make venv` first")
    python = str(client.with_name("python"))
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    print(f"annex-client start-up, {runs} fresh processes each ({client}, Python {version})")
    help_ms = wall_ms([str(client), "--help"], runs)
    sub_help_ms = wall_ms([str(client), "request", "--help"], runs)
    python_ms = wall_ms([python, "-c", "pass"], runs)
    print(f"  annex-client --help          {summary(help_ms)}")
    print(f"  annex-client request --help  {summary(sub_help_ms)}")
    print(f"  python -c pass (floor)       {summary(python_ms)}")
    median_help = statistics.median(help_ms)
    print(
        f"  --help median vs the {TARGET_MS:.0f} ms target: {median_help / TARGET_MS:.2f}x "
        f"({'met' if median_help < TARGET_MS else 'MISSED'}); "
        f"{median_help - statistics.median(python_ms):.1f} ms above a bare interpreter"
    )

    cli_import = import_ms(python, "import annex_client.cli", "annex_client", runs)
    botocore_import = import_ms(
        python, "import botocore.session, botocore.auth, botocore.awsrequest", "botocore", runs
    )
    print("import time (python -X importtime, cumulative)")
    print(f"  annex_client.cli             {summary(cli_import)}")
    print(f"  botocore (session, auth)     {summary(botocore_import)}")
    ratio = statistics.median(botocore_import) / statistics.median(cli_import)
    print(
        f"  botocore costs {ratio:.1f}x the CLI module's import; it is imported only when a request is signed"
    )
    probe = (
        "import sys, io, contextlib\n"
        "from annex_client.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'botocore', 'urllib3', 'ssl'}))\n"
    )
    loaded = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    print(f"  heavy modules loaded by --help: {loaded}")


if __name__ == "__main__":
    main()
