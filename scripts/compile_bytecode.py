"""Compile every module of a `sam build` output to bytecode for the Lambda runtime, in place.

`sam build` ships sources only. Lambda's /opt and /var/task are read-only, so Python cannot cache
bytecode there and compiles every module again at each cold start (about 4.5x slower imports, measured
by bench/bench_coldstart.py). The bytecode is hash-based and unchecked: the deployment zip does not keep
source mtimes exactly (zip stores them to two seconds), which would invalidate timestamp-based .pyc files,
and an unchecked hash costs nothing at import. It must be compiled by the runtime's Python version (the
template's `Runtime`); a test checks both.

Usage: python scripts/compile_bytecode.py BUILD_DIR
"""

from __future__ import annotations

import compileall
import py_compile
import sys
from pathlib import Path


def compile_tree(root: Path) -> int:
    """Compile every .py below `root`; returns how many files failed (0 when all compiled)."""
    ok = compileall.compile_dir(
        root,
        quiet=1,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: compile_bytecode.py BUILD_DIR (an existing directory)", file=sys.stderr)  # noqa: T201
        return 2
    return compile_tree(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
