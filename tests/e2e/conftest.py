"""The e2e tier: `annex-local up` as a real process, driven over real HTTP with real SigV4 signatures by
the real annex-client and a third-party signer (awscurl)."""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 90


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    state_dir: Path
    env: dict[str, str]
    log: Path

    @property
    def api(self) -> str:
        return self.env["ANNEX_ENDPOINT"]

    def client(
        self, *args: str, profile: str = "alice", timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "annex-client"), *args],
            env={**self.env, "AWS_PROFILE": profile},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def client_json(self, *args: str, profile: str = "alice") -> Any:
        done = self.client(*args, "--json", profile=profile)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    @property
    def heartbeat_api(self) -> str:
        """The heartbeat API's base URL (its own API, as deployed: HeartbeatUrl without /heartbeat)."""
        return self.env["ANNEX_HEARTBEAT_URL"].removesuffix("/heartbeat")

    def awscurl(
        self,
        method: str,
        path: str,
        *,
        profile: str = "alice",
        body: Any = None,
        secret: str | None = None,
        api: str | None = None,
    ) -> tuple[int, Any]:
        """Sign and send with awscurl's own SigV4 code (a third-party signer, not botocore's).
        Returns (status, parsed body)."""
        from awscurl.awscurl import make_request

        creds = self.credentials(profile)
        data = "" if body is None else body if isinstance(body, str) else json.dumps(body)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        resp = make_request(
            method,
            "execute-api",
            "us-east-1",
            f"{api or self.api}{path}",
            headers,
            data,
            creds["aws_access_key_id"],
            secret or creds["aws_secret_access_key"],
            creds.get("aws_session_token"),
            False,
        )
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, resp.text

    def credentials(self, profile: str) -> dict[str, str]:
        for name in ("credentials", "instance-credentials"):
            config = configparser.ConfigParser()
            config.read(self.state_dir / name)
            if config.has_section(profile):
                return dict(config[profile])
        raise KeyError(f"no credentials for {profile}")

    def aws(self, service: str) -> Any:
        """A boto3 client on the embedded AWS (to look at what the control plane did)."""
        return boto3.client(
            service,
            endpoint_url=self.env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="e2e",
            aws_secret_access_key="e2e",
        )

    def instances(self, annex_id: str) -> dict[str, str]:
        resp = self.aws("ec2").describe_instances(Filters=[{"Name": "tag:annex:id", "Values": [annex_id]}])
        return {i["InstanceId"]: i["State"]["Name"] for r in resp["Reservations"] for i in r["Instances"]}


def wait_for(what: str, check: Callable[[], Any], *, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def start_stack(state_dir: Path, *extra: str) -> RunningStack:
    log = state_dir.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ANNEX_"))}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "annex_local.cli", "up", "--state-dir", str(state_dir), "--fast", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    env_file = state_dir / "env"
    deadline = time.monotonic() + STARTUP_SECONDS
    while not env_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"annex-local did not start:\n{log.read_text()}")
        time.sleep(0.2)
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    return RunningStack(proc, state_dir, {**env, **values}, log)


def stop_stack(stack: RunningStack) -> None:
    stack.proc.send_signal(signal.SIGTERM)
    try:
        code = stack.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stack.proc.kill()
        pytest.fail("annex-local did not stop within 30 s of SIGTERM")
    assert code == 0, stack.log.read_text()[-3000:]
    assert not (stack.state_dir / "env").exists(), "a stopped stack must not leave an env file behind"


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[RunningStack]:
    running = start_stack(tmp_path_factory.mktemp("annex-local") / "state")
    yield running
    stop_stack(running)


@pytest.fixture(autouse=True)
def no_local_config():
    """The e2e tier passes its environment to subprocesses explicitly; nothing to fake here."""
    return
