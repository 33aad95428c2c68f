"""Runs the real Lambda handlers in this process. Handlers are found from template.yaml.

Invocations run concurrently, as on Lambda (a lease timer does not wait behind a minute's sweep, a
launch, or another batch of timers); the embedded AWS answers one call at a time
(annex_local.aws.OneRequestAtATime), so moto, which is not thread-safe, sees no concurrency. Functions
that use Powertools Metrics take turns under one lock: its metric store is one per process here (one
per execution environment on Lambda), and two of them flushing at once would mix or lose metrics."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from annex_local.events import FakeContext
from annex_local.template import REPO_ROOT, functions, handler_path, resolve_environment, resources

log = logging.getLogger("annex_local")


def install_code_paths() -> list[str]:
    """Make the template's code importable, as Lambda does: each layer's content (Lambda's /opt/python)
    and the repository root (functions are imported as functions.<name>.app)."""
    paths = [
        str(REPO_ROOT / str(spec["Properties"]["ContentUri"]))
        for spec in resources("AWS::Serverless::LayerVersion").values()
    ]
    paths.append(str(REPO_ROOT))
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)
    return paths


def stack_environment(
    *, table_name: str, stack_name: str, overrides: dict[str, str], region: str, account: str
) -> dict[str, str]:
    """The union of every function's resolved environment. Functions share one process here, so a
    variable two functions define differently would be a conflict; the template has none, and this
    checks it stays so."""
    merged: dict[str, str] = {}
    for logical_id in functions():
        env = resolve_environment(
            logical_id,
            table_name=table_name,
            stack_name=stack_name,
            overrides=overrides,
            region=region,
            account=account,
        )
        for key, value in env.items():
            if key in merged and merged[key] != value and key != "POWERTOOLS_SERVICE_NAME":
                raise ValueError(f"{key} differs between functions ({merged[key]!r} vs {value!r})")
            merged[key] = value
    return merged


class LocalRuntime:
    def __init__(self) -> None:
        # The lock of the functions that share process-wide state (Powertools Metrics), and of the
        # simulated nodes' EC2 calls.
        self.lock = threading.RLock()
        self._concurrent: set[str] = set()
        self._counts = threading.Lock()
        self.invocations: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._handlers: dict[str, Callable[..., Any]] = {}
        # Imports happen under their own lock: two threads importing the handler modules at once can
        # each see the other's partially initialised module (`cannot import name 'Metrics' from
        # partially initialized module`). `preload()` imports them all before any thread starts.
        self._import_lock = threading.Lock()
        self.on_invoke: list[Callable[[str, float], None]] = []

    def configure(self, environment: dict[str, str]) -> None:
        os.environ.update(environment)

    def handler(self, logical_id: str) -> Callable[..., Any]:
        with self._import_lock:
            if logical_id not in self._handlers:
                module_name, attribute = handler_path(logical_id)
                module = importlib.import_module(module_name)
                self._handlers[logical_id] = getattr(module, attribute)
                if not _uses_shared_state(module):
                    self._concurrent.add(logical_id)
            return self._handlers[logical_id]

    def lock_of(self, logical_id: str) -> AbstractContextManager[Any]:
        """What an invocation of this function holds: nothing, or the shared lock."""
        self.handler(logical_id)
        return contextlib.nullcontext() if logical_id in self._concurrent else self.lock

    def preload(self) -> None:
        """Import every function's handler module once, in this thread (call after `configure`: the
        handlers' Logger and Metrics read the environment when their module is imported)."""
        for logical_id in functions():
            self.handler(logical_id)

    def invoke(self, logical_id: str, event: Any) -> Any:
        fn = self.handler(logical_id)
        with self.lock_of(logical_id):
            started = time.monotonic()
            with self._counts:
                self.invocations[logical_id] += 1
            try:
                return fn(event, FakeContext(logical_id))
            except Exception:
                with self._counts:
                    self.errors[logical_id] += 1
                raise
            finally:
                for hook in self.on_invoke:
                    hook(logical_id, time.monotonic() - started)

    def as_gateway_handler(self, logical_id: str) -> Callable[[Any, Any], Any]:
        return lambda event, _context: self.invoke(logical_id, event)


def _uses_shared_state(module: Any) -> bool:
    """Whether a handler module holds a Powertools Metrics (its store is shared by every instance in a
    process)."""
    from aws_lambda_powertools import Metrics  # noqa: PLC0415 - the functions' own dependency

    return any(isinstance(value, Metrics) for value in vars(module).values())
