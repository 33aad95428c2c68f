"""Installs the IAM recorder in subprocesses of the test run (the e2e tier's `annex-local up`)."""

import os

if os.environ.get("IAM_CALL_RECORD"):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from tests.iam.recorder import install

    install()
