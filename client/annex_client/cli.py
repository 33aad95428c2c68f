"""Placeholder entry point; the client issue builds the real command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("annex-client: not built yet\n")
    return 2
