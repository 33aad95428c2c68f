"""The local runtime runs functions concurrently, as Lambda does (a lease timer does not wait behind a
sweep), while the embedded AWS answers one call at a time (moto is not thread-safe) and the functions
that share Powertools' process-wide metric store still take turns."""

from __future__ import annotations

import io
import json
import threading
import time
from types import SimpleNamespace

import annex_local.runtime as runtime_module
from annex_local.aws import OneRequestAtATime
from annex_local.runtime import LocalRuntime
from annex_local.template import handler_path
from aws_lambda_powertools import Metrics

SLOW = "LeaseCheckFunction"
QUICK = "LeaseTimerFunction"


def runtime_with(monkeypatch, modules: dict[str, SimpleNamespace]) -> LocalRuntime:
    by_module = {handler_path(fn)[0]: module for fn, module in modules.items()}
    monkeypatch.setattr(runtime_module.importlib, "import_module", lambda name: by_module[name])
    return LocalRuntime()


class Slow:
    def __init__(self) -> None:
        self.started = threading.Event()

    def handler(self, event, context):
        self.started.set()
        time.sleep(0.5)


def quick_finishes_while_slow_runs(rt: LocalRuntime, slow: Slow) -> bool:
    """Start the slow function, then invoke the quick one: does it return before the slow one ends?"""
    slow_done = threading.Event()
    thread = threading.Thread(target=lambda: (rt.invoke(SLOW, {}), slow_done.set()))
    thread.start()
    assert slow.started.wait(5)
    rt.invoke(QUICK, {})
    quick_first = not slow_done.is_set()
    thread.join()
    return quick_first


def test_a_function_does_not_wait_behind_another_functions_invocation(monkeypatch):
    # Given a long sweep running and a lease timer (neither holds a Powertools Metrics)
    slow = Slow()
    rt = runtime_with(
        monkeypatch,
        {SLOW: SimpleNamespace(handler=slow.handler), QUICK: SimpleNamespace(handler=lambda e, c: None)},
    )
    # Then the lease timer's invocation runs and returns while the sweep still runs
    assert quick_finishes_while_slow_runs(rt, slow)


def test_functions_sharing_the_powertools_metric_store_take_turns(monkeypatch):
    # Given two functions that both hold a Powertools Metrics (one store per process)
    slow = Slow()
    rt = runtime_with(
        monkeypatch,
        {
            SLOW: SimpleNamespace(handler=slow.handler, metrics=Metrics()),
            QUICK: SimpleNamespace(handler=lambda e, c: None, metrics=Metrics()),
        },
    )
    # Then the second waits until the first has finished
    assert not quick_finishes_while_slow_runs(rt, slow)


def test_the_embedded_aws_answers_one_request_at_a_time_except_an_sqs_long_poll():
    running = most = 0
    guard = threading.Lock()

    def app(environ, start_response):
        nonlocal running, most
        length = int(environ["CONTENT_LENGTH"])
        assert json.loads(environ["wsgi.input"].read(length))["QueueUrl"] == "q"  # the body reaches moto
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        start_response("200 OK", [])
        return [b"{}"]

    serialized = OneRequestAtATime(app)

    def call(target: str, wait: int) -> None:
        body = json.dumps({"QueueUrl": "q", "WaitTimeSeconds": wait}).encode()
        environ = {
            "HTTP_X_AMZ_TARGET": target,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        assert serialized(environ, lambda *a: None) == [b"{}"]

    def burst(target: str, wait: int = 0) -> int:
        nonlocal most
        most = 0
        threads = [threading.Thread(target=call, args=(target, wait)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return most

    assert burst("DynamoDB_20120810.TransactWriteItems") == 1
    assert burst("AmazonSQS.ReceiveMessage", wait=0) == 1
    assert burst("AmazonSQS.ReceiveMessage", wait=20) > 1  # a poll that waits must not stop every other call
