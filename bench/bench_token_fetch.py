"""1,000 annex instances fetching the pool token at boot against SSM Parameter Store's default throughput.

A simulation, not a measurement against AWS (no AWS account is used): N instances start their
`retry fetch_pool_token` step at the same moment (the worst case) or spread over a window; SSM is a token
bucket refilled at 40 requests per second (the default throughput of GetParameter, GetParameters and
GetParametersByPath per account and Region: AWS Systems Manager endpoints and quotas) holding at most 40
(assumed: AWS documents the rate, not the burst); a request the bucket cannot pay for is throttled. Each
instance retries as the boot script does: exponential backoff 2, 4, 8, 16, 30, 30... s, each wait drawn
between half of it and all of it (bash's `$RANDOM`), and gives up when the next wait would pass
`InstanceConfigTimeout` (the template's default, 10 minutes). The retry policy is read from
annex-node.sh: the bench refuses to run if those lines changed.

Prints, per scenario: instances that got the token, the time until the last one did, attempts per
instance (mean, max), and the highest request rate SSM saw in any second."""

from __future__ import annotations

import heapq
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "layers/annex/annex/launch/userdata/annex-node.sh"
RATE = 40.0  # requests per second (documented default)
BURST = 40.0  # bucket size (assumed)
TIMEOUT = 600.0  # InstanceConfigTimeout default (10m)
POLICY = (
    "local delay=2 wait",
    "wait=$(( delay / 2 + RANDOM % (delay / 2 + 1) ))",
    "if (( $(date +%s) + wait > DEADLINE )); then",
    "delay=$(( delay * 2 > 30 ? 30 : delay * 2 ))",
)


def check_policy() -> None:
    text = SCRIPT.read_text()
    body = re.search(r"^retry\(\) \{\n(.*?)^\}", text, flags=re.S | re.M)
    assert body, "annex-node.sh has no retry()"
    for line in POLICY:
        assert line in body.group(1), f"annex-node.sh's retry() changed ({line!r}): update this bench"


def simulate(n: int, spread: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    events = [(rng.uniform(0, spread), i, 2) for i in range(n)]  # (time, instance, next delay)
    heapq.heapify(events)
    start = {i: t for t, i, _ in events}
    tokens, last = BURST, 0.0
    attempts = [0] * n
    done: dict[int, float] = {}
    per_second: dict[int, int] = {}
    while events:
        t, i, delay = heapq.heappop(events)
        tokens = min(BURST, tokens + (t - last) * RATE)
        last = t
        attempts[i] += 1
        per_second[int(t)] = per_second.get(int(t), 0) + 1
        if tokens >= 1:
            tokens -= 1
            done[i] = t
            continue
        wait = delay // 2 + rng.randrange(32768) % (delay // 2 + 1)
        if t + wait > start[i] + TIMEOUT:
            continue  # powers off: the configuration bound passed
        heapq.heappush(events, (t + wait, i, min(delay * 2, 30)))
    return {
        "ok": len(done),
        "last": max(done.values()) if done else float("nan"),
        "mean_attempts": sum(attempts) / n,
        "max_attempts": max(attempts),
        "peak_rps": max(per_second.values()),
    }


def main() -> None:
    check_policy()
    print(f"SSM GetParameter: {RATE:.0f} requests/s (burst {BURST:.0f}, assumed); timeout {TIMEOUT:.0f} s")
    for n, spread in ((1000, 0.0), (1000, 60.0), (5000, 0.0)):
        runs = [simulate(n, spread, seed) for seed in range(5)]
        ok = min(r["ok"] for r in runs)
        last = max(r["last"] for r in runs)
        print(
            f"{n} instances starting within {spread:.0f} s (5 runs): token for {ok}/{n} in every run; "
            f"last at {last:.0f} s; attempts mean {max(r['mean_attempts'] for r in runs):.1f}, "
            f"max {max(r['max_attempts'] for r in runs)}; peak {max(r['peak_rps'] for r in runs)} requests "
            "in one second"
        )


if __name__ == "__main__":
    main()
