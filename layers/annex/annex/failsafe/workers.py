"""Bounded parallelism for the sweeps' per-item store work (one DynamoDB transaction per annex or
instance, 5-10 ms each: 10,000 of them one at a time would take 50-100 s; with 10 threads, 5-10 s).

`Workers(n).map(fn, items)` runs `fn` on every item with at most `n` threads and returns, in the items'
order, each item's result or the exception it raised: one failure never stops the others, and the caller
folds the outcomes into its report on its own thread. `Workers(1)` (SERIAL) runs inline, one item after
the other: the moto tiers and the local stack use it, since moto's backends are not thread-safe. botocore
clients are thread-safe and shared by the threads; the default of 10 matches botocore's connection pool
(`max_pool_connections`), so no thread waits for a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

MAX_WORKERS = 32


@dataclass(frozen=True)
class Outcome[T, R]:
    item: T
    result: R | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Workers:
    size: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_WORKERS:
            raise ValueError(f"workers: 1 to {MAX_WORKERS}, not {self.size}")

    def map[T, R](self, fn: Callable[[T], R], items: Iterable[T]) -> list[Outcome[T, R]]:
        todo = list(items)
        if self.size == 1 or len(todo) <= 1:
            return [_run(fn, item) for item in todo]
        with ThreadPoolExecutor(max_workers=min(self.size, len(todo)), thread_name_prefix="sweep") as pool:
            return list(pool.map(lambda item: _run(fn, item), todo))


def _run[T, R](fn: Callable[[T], R], item: T) -> Outcome[T, R]:
    try:
        return Outcome(item, result=fn(item))
    except Exception as exc:  # reported per item by the caller
        return Outcome(item, error=exc)


SERIAL = Workers(1)
