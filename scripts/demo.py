"""`make demo`: a full annex lifecycle on the offline local stack, narrated, with the real annex-client.

It starts `annex-local up --fast --detach` (5 s sweeps and heartbeats, short grace periods), then, as the
researcher alice:
  1. checks the setup (the fail-safe sweeps are running);
  2. requests three instances with a short lease and idle timeout; the third simulated node goes idle;
  3. requests a one-instance annex with a one-minute lease and leaves it alone;
  4. watches the instances launch and heartbeat; sees the idle one reaped by the cloud;
  5. extends the lease, then stops the annex;
  6. shows the final status and history of both, and checks nothing is left running.
Exits non-zero if anything did not happen as narrated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 240  # seconds for the whole lifecycle (the brief: under five minutes)


class DemoFailed(Exception):
    pass


class Demo:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.started = time.monotonic()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANNEX_"))}
        self.env: dict[str, str] = {}

    # --- narration --------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"\n[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def run(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            print(f"$ annex-client {' '.join(args)}", flush=True)
        done = subprocess.run(
            [str(BIN / "annex-client"), *args],
            env={**self.env, "AWS_PROFILE": "alice"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if show else subprocess.PIPE,  # shown in the order it was written
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if show:
            sys.stdout.write(done.stdout)
            sys.stdout.flush()
        return done

    def status(self, name: str) -> dict[str, Any]:
        done = self.run("status", name, "--json", show=False)
        if done.returncode != 0:
            raise DemoFailed(f"status {name} failed: {done.stderr.strip()}")
        return dict(json.loads(done.stdout))

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(2)

    # --- the stack --------------------------------------------------------------------------------

    def local(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "annex-local"), *args, "--state-dir", str(self.state_dir)],
            env=self.base_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=150,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def start(self) -> None:
        self.say("Starting the local stack: embedded AWS (moto), SigV4 gateway, the real Lambda handlers.")
        print(f"$ annex-local up --fast --detach --state-dir {self.state_dir.name}", flush=True)
        up = self.local("up", "--fast", "--detach")  # returns once the stack is ready
        if up.returncode != 0:
            raise DemoFailed(f"annex-local did not start: {up.stderr.strip()}")
        values = dict(
            line.split("=", 1) for line in (self.state_dir / "env").read_text().splitlines() if "=" in line
        )
        self.env = {**self.base_env, **values}
        print(f"  API {values['ANNEX_ENDPOINT']}   embedded AWS {values['AWS_ENDPOINT_URL']}", flush=True)

    def stop(self) -> None:
        if (self.state_dir / "lock").exists():
            self.local("down")

    def running_instances(self) -> list[str]:
        ec2 = boto3.client(
            "ec2",
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="demo",
            aws_secret_access_key="demo",
        )
        resp = ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
        )
        return [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]]

    # --- the story --------------------------------------------------------------------------------

    def lifecycle(self) -> None:
        self.say("Alice checks her setup: endpoint, identity, limits, and that the fail-safe sweeps run.")
        self.wait_until("the first sweeps", lambda: self.run("check-setup", show=False).returncode == 0, 60)
        self.run("check-setup")

        self.say(
            "Alice requests 3 instances for 3 minutes, reaped after 30 idle seconds. (The simulated "
            "HTCondor nodes are chosen by a tag: two stay busy, the third runs out of work after 20 s.)"
        )
        done = self.run(
            "request", "genome", "--count", "3", "--lease", "3m", "--idle", "30s",
            "--tag", "annex-sim=busy,busy,busy-then-idle:20s", "--yes", "--wait", "--timeout", "90s",
        )  # fmt: skip
        if done.returncode != 0:
            raise DemoFailed("the request did not launch")

        self.say("She also asks for one instance with a one-minute lease, and then forgets about it.")
        if self.run("request", "forgotten", "--count", "1", "--lease", "1m", "--yes").returncode != 0:
            raise DemoFailed("the second request failed")

        self.say("The nodes heartbeat every 5 s: claimed slots, last heartbeat, lease left.")
        self.wait_until("heartbeats from all three", lambda: self._heartbeating("genome") >= 3, 60)
        self.run("status", "genome")

        self.say("The third node has run out of work. Nobody has to notice: idle-reap terminates it.")
        reaped = self.wait_until("the idle instance to be reaped", lambda: self._ended("genome", "idle"), 120)
        print(f"  reaped {reaped[0]} (idle)", flush=True)
        self.run("status", "genome")

        self.say(
            "Alice needs more time: she extends the lease by 2 minutes (from its current end, not from now)."
        )
        if self.run("extend", "genome", "--by", "2m", "--yes").returncode != 0:
            raise DemoFailed("extend failed")

        self.say(
            "Meanwhile the forgotten annex reaches the end of its lease; lease-check ends it in the cloud."
        )
        self.wait_until(
            "the forgotten annex to expire", lambda: self.status("forgotten")["state"] == "ended", 120
        )
        self.run("status", "forgotten")

        self.say("Her jobs are done. She stops the annex: TerminateInstances is sent before the answer.")
        if self.run("stop", "genome", "--yes").returncode != 0:
            raise DemoFailed("stop failed")

        self.say("The final status and history, with times:")
        self.run("status", "genome")
        genome, forgotten = self.status("genome"), self.status("forgotten")
        if genome.get("end_reason") != "stopped" or forgotten.get("end_reason") != "lease-expired":
            raise DemoFailed(
                f"unexpected end reasons: {genome.get('end_reason')}, {forgotten.get('end_reason')}"
            )
        left = self.wait_until("every instance to be gone", lambda: not self.running_instances() or None, 30)
        self.say(
            f"Instances still running in the embedded EC2: {0 if left else len(self.running_instances())}."
        )

    def _heartbeating(self, name: str) -> int:
        return sum(1 for i in self.status(name).get("instances", []) if i.get("last_heartbeat_at"))

    def _ended(self, name: str, reason: str) -> list[str]:
        return [
            i["instance_id"]
            for i in self.status(name).get("instances", [])
            if i.get("state") == "terminated" and i.get("end_reason") == reason
        ]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="annex-demo-") as tmp:
        demo = Demo(Path(tmp) / "state")
        try:
            demo.start()
            demo.lifecycle()
        except (DemoFailed, subprocess.TimeoutExpired) as exc:
            print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
            log = Path(tmp) / "state" / "annex-local.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-4000:])
            return 1
        finally:
            demo.stop()
        took = time.monotonic() - demo.started
        print(f"\nDemo complete in {took:.0f} s: every instance stopped, by idle-reap, lease-check or stop.")
        return 0 if took < DEADLINE + 60 else 1


if __name__ == "__main__":
    sys.exit(main())
