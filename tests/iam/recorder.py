"""IAM by execution, part 1: record every AWS operation each Lambda function performs.

A pytest plugin (`-p tests.iam.recorder`, set by the Makefile's integration and e2e targets): a botocore
`before-parameter-build` hook on every session records, for each call made from inside a function's
handler (a frame in `functions/<name>/`), the function's CodeUri, the service, the operation and its
parameters (user data dropped, long strings cut) to the JSON-lines file named by IAM_CALL_RECORD. The
local stack runs in a subprocess: `tests/iam/site` goes on its PYTHONPATH, whose sitecustomize installs
the same hook there. tests/iam/test_iam_by_execution.py checks the records against template.yaml.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

RECORD_VARIABLE = "IAM_CALL_RECORD"
_FUNCTIONS_DIR = os.sep + "functions" + os.sep
_TESTS_DIR = os.sep + "tests" + os.sep
_IAM_DIR = os.sep + "tests" + os.sep + "iam" + os.sep
_seen: set[str] = set()
_lock = threading.Lock()
_installed: list[bool] = []  # non-empty once the hook is installed


def _calling_function() -> str | None:
    """`functions/<name>/` of the innermost handler frame on this thread's stack; None for a call a test
    makes itself (a test frame comes first: a fault hook or an assertion running inside a handler)."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if _TESTS_DIR in path and _IAM_DIR not in path:
            return None
        if _FUNCTIONS_DIR in path:
            tail = path.rsplit(_FUNCTIONS_DIR, 1)[1]
            return "functions/" + tail.split(os.sep, 1)[0] + "/"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "UserData"}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bytes):
        return "<bytes>"
    if isinstance(value, str) and len(value) > 300:
        return value[:300]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return str(value)


def _record(params: dict[str, Any], model: Any, **_: Any) -> None:
    target = os.environ.get(RECORD_VARIABLE)
    code_uri = _calling_function()
    if not target or code_uri is None:
        return
    entry = {
        "code_uri": code_uri,
        "service": model.service_model.service_name,
        "operation": model.name,
        "params": _clean(params),
        "env": {k: os.environ.get(k, "") for k in ("TABLE_NAME", "STACK_NAME", "INSTANCE_PROFILE_ARN")},
    }
    line = json.dumps(entry, sort_keys=True)
    with _lock:
        if line in _seen:
            return
        _seen.add(line)
        with Path(target).open("a") as fh:
            fh.write(line + "\n")


def install() -> None:
    """Register the hook on every botocore session created from now on (boto3's default one too)."""
    if _installed:
        return
    import botocore.session

    original = botocore.session.Session.__init__

    def init(self: botocore.session.Session, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.register("before-parameter-build.*.*", _record)

    botocore.session.Session.__init__ = init  # type: ignore[method-assign]
    _installed.append(True)


def pytest_configure(config: Any) -> None:
    target = os.environ.get(RECORD_VARIABLE)
    if not target:
        raise RuntimeError(f"tests.iam.recorder needs {RECORD_VARIABLE}=<file> (the Makefile sets it)")
    install()
    site = str(Path(__file__).with_name("site"))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if site not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([site, *paths])
