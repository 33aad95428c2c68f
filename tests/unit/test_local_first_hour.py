"""The local stack's first-hour behaviour that needs no socket: handler imports one at a time, handler
failures logged, bad parameters named in `--param` words, and the docs that describe it kept true."""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from annex.core.config import RequestSettings
from annex_local import runtime as runtime_module
from annex_local.runtime import LocalRuntime
from annex_local.stack import FAST_PARAMS, _gateway_log, describe_settings_errors, parameter_of_variable
from annex_local.template import functions, handler_path, parameter_defaults
from pydantic import ValidationError

from tests.unit.test_local_gateway import call, gateway

ROOT = Path(__file__).resolve().parents[2]


# --- the start-up import race -------------------------------------------------------------------------


def test_handler_modules_are_imported_one_at_a_time(monkeypatch):
    # Given an import that takes a while (as Powertools' does), counting how many run at once
    running, most = 0, 0
    guard = threading.Lock()

    def slow_import(name: str):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return SimpleNamespace(handler=lambda event, context: name)

    monkeypatch.setattr(runtime_module.importlib, "import_module", slow_import)
    rt = LocalRuntime()
    ids = list(functions())
    barrier = threading.Barrier(len(ids))

    def first_invocation(logical_id: str) -> None:
        barrier.wait()
        rt.handler(logical_id)

    # When every function's first invocation arrives at once, from its own thread
    threads = [threading.Thread(target=first_invocation, args=(fn,)) for fn in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Then no two imports overlapped (two threads importing at once is the partially-initialised race)
    assert most == 1


def test_preload_imports_every_functions_handler(monkeypatch):
    imported: list[str] = []
    monkeypatch.setattr(
        runtime_module.importlib,
        "import_module",
        lambda name: imported.append(name) or SimpleNamespace(handler=None),
    )
    LocalRuntime().preload()
    assert sorted(imported) == sorted({handler_path(fn)[0] for fn in functions()})


# --- handler failures reach the log --------------------------------------------------------------------


def test_a_failing_handler_is_logged_with_its_traceback(caplog):
    gw, _ = gateway(RuntimeError("the table is gone"), log=_gateway_log)
    with caplog.at_level(logging.INFO, logger="annex_local.gateway"):
        answer = call(gw, "GET", "/v1/health")
    assert answer.status == 502
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "annex_local.gateway"]
    assert len(errors) == 1
    assert "RequestFunction failed" in errors[0].getMessage()
    assert "RuntimeError: the table is gone" in errors[0].getMessage()


# --- bad parameters, in the words of --param -------------------------------------------------------------


def environment(**params: str) -> tuple[dict[str, str], dict[str, str]]:
    """The variables the template would give the functions for these parameters (and its defaults)."""
    values = {**parameter_defaults(), "AdminPrincipals": "", **params}
    env = {var: values[param] for var, param in parameter_of_variable().items()}
    env.update(TABLE_NAME="annex-table", STACK_NAME="annex-local")
    # the variables that come from the stack itself, not from a parameter
    env.update(
        REGION="us-east-1",
        EVENT_BUS_NAME="annex-local-events",
        NOTICE_TOPIC_ARN="arn:aws:sns:us-east-1:123456789012:annex-local-notices",
        INSTANCE_PROFILE_ARN="arn:aws:iam::123456789012:instance-profile/annex-local-AnnexInstanceProfile",
        LEASE_TIMER_QUEUE_URL="https://sqs.us-east-1.amazonaws.com/123456789012/annex-local-LeaseTimerQueue",
    )
    return env, values


def errors_of(model, env):
    with pytest.raises(ValidationError) as caught:
        model.from_env(env)
    return caught.value.errors()


def test_a_malformed_parameter_is_named_with_its_value_and_the_reason():
    env, values = environment(MaxLiveInstancesPerOwner="abc")
    lines = describe_settings_errors(errors_of(RequestSettings, env), values)
    assert lines == [f"MaxLiveInstancesPerOwner=abc: {errors_of(RequestSettings, env)[0]['msg']}"]
    assert "MAX_LIVE" not in lines[0]  # the function's variable name means nothing to the user


def test_inconsistent_parameters_are_named_in_template_words():
    env, values = environment(MaxLiveInstancesPerOwner="10")
    (line,) = describe_settings_errors(errors_of(RequestSettings, env), values)
    assert line == (
        "MaxInstancesPerAnnex must not exceed MaxLiveInstancesPerOwner "
        "(here MaxInstancesPerAnnex=50, MaxLiveInstancesPerOwner=10)"
    )


# --- the docs say what the code does ---------------------------------------------------------------------


def test_the_readme_names_every_parameter_fast_sets():
    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("`--fast` sets") :].split("\n\n", 1)[0]
    for name, value in FAST_PARAMS.items():
        assert f"`{name}={value}`" in paragraph, name


def test_make_help_lists_every_documented_target():
    makefile = (ROOT / "Makefile").read_text()
    documented = re.findall(r"^([A-Za-z0-9_.-]+):[^\n]*## ", makefile, re.MULTILINE)
    assert "test-e2e" in documented
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    listed = [line.split()[0] for line in shown.splitlines() if line.strip()]
    assert listed == documented
