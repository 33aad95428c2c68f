"""Simulated HTCondor nodes. Every instance that launches in the embedded EC2 gets a role session of
the annex instance role (its session name is the instance id, as on EC2), sends signed heartbeats to
the gateway as itself, and obeys the answer: `drain` stops taking jobs, `terminate` powers off (the
instance terminates: its shutdown behaviour is terminate). Like the real agent it also keeps a
dead-man switch: it powers off once the last lease expiry it heard has passed, plus a margin.

Behaviour is chosen per annex by the user tag `annex-sim` (request with `--tag annex-sim=...`):

| value | the node |
|---|---|
| `busy` (default) | every slot claimed, always |
| `idle` | no slot ever claimed |
| `silent` | never sends a heartbeat (a node that failed to boot or lost its network) |
| `busy-then-idle:90s` | busy for that long after boot, then idle |
| `broken-token` | reports a boot problem (the collector refused its token) in a heartbeat, then powers off |
| `spot-interrupt:30s` | busy; EC2 interrupts it that long after boot (below) |

A comma-separated list gives each instance of the annex its own behaviour, in launch order
(`busy,busy,idle`); replacements of interrupted instances continue the list.

A spot interruption, as the local EC2 plays it: EC2's warning goes on the default bus (the template's
InterruptionRule invokes the interruption function with it), the node sees the notice in its metadata,
drains at once (its jobs are vacated) and reports the notice in a heartbeat; after the notice period
(two minutes; 10 s with `--fast`) EC2 reclaims it: it terminates, and its state changes (shutting-down,
terminated) go on the bus.

Each node has one partitionable slot of `CPUS` CPUs, as HTCondor has by default since 23.0; a busy node
runs one one-CPU job per CPU in dynamic slots. Its heartbeat counts them as the real agent does
(`count_slots`: the same rule as annex-heartbeat's awk), so a full node reads "busy 4 of 4".
"""

from __future__ import annotations

import configparser
import json
import logging
import secrets
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from annex.core.clock import parse_duration

from annex_local.events import spot_warning_entry, state_change_entry
from annex_local.sigv4 import Identity, sign_headers

log = logging.getLogger("annex_local.nodes")
SIM_TAG = "annex-sim"
CPUS = 4
DEAD_MAN_MARGIN = timedelta(seconds=30)


def parse_behaviour(value: str) -> tuple[str, timedelta]:
    """`busy-then-idle:90s` -> ('busy-then-idle', 90s). Unknown values fall back to busy."""
    name, _, arg = value.strip().partition(":")
    if name in TIMED_BEHAVIOURS:
        try:
            return name, parse_duration(arg or "60s")
        except ValueError:
            return name, timedelta(seconds=60)
    return (name if name in BEHAVIOURS else "busy"), timedelta(0)


BEHAVIOURS = ("busy", "idle", "silent", "broken-token")
TIMED_BEHAVIOURS = ("busy-then-idle", "spot-interrupt")
SPOT_NOTICE_PERIOD = timedelta(minutes=2)  # EC2's interruption warning comes two minutes ahead
BROKEN_TOKEN_PROBLEM = (
    "the collector at cm.annex.local refused ADVERTISE_STARTD for annex@annex.local — see the deploy guide"
)


def count_slots(ads: list[dict[str, Any]]) -> tuple[int, int]:
    """(claimed, total) as a user reads "busy 4 of 4", from slot ads, like annex-heartbeat: static and
    dynamic slots count (claimed when Claimed or Preempting); a partitionable slot does not, its free
    CPUs do (room for that many one-CPU jobs)."""
    claimed = total = 0
    for ad in ads:
        if ad["SlotType"] == "Partitionable":
            total += ad["Cpus"]
            continue
        total += 1
        claimed += ad["State"] in ("Claimed", "Preempting")
    return claimed, total


@dataclass
class Node:
    instance_id: str
    annex_id: str
    behaviour: str
    busy_for: timedelta
    booted_at: datetime
    access_key: str
    secret_key: str
    session_token: str
    lease_expires_at: datetime | None = None
    draining: bool = False
    powered_off: bool = False
    heartbeats: int = 0
    last_action: str = ""
    spot_notice: str | None = None  # what the instance's metadata (IMDS spot/instance-action) shows
    reclaim_at: datetime | None = None
    log: list[str] = field(default_factory=list)

    def jobs(self, now: datetime) -> int:
        if self.draining or self.behaviour == "idle":
            return 0
        if self.behaviour == "busy-then-idle" and now - self.booted_at >= self.busy_for:
            return 0
        return CPUS

    def slot_ads(self, now: datetime) -> list[dict[str, Any]]:
        """What `condor_status -slots` shows: the partitionable slot and one dynamic slot per job."""
        jobs = self.jobs(now)
        pslot = {"SlotType": "Partitionable", "State": "Unclaimed", "Cpus": CPUS - jobs}
        return [pslot, *({"SlotType": "Dynamic", "State": "Claimed", "Cpus": 1} for _ in range(jobs))]


class SimulatedNodes:
    def __init__(
        self,
        *,
        ec2: Any,
        heartbeat_url: str,
        identities: dict[str, Any],
        role_name: str,
        stack_name: str,
        heartbeat_period: float,
        lock: threading.RLock,
        region: str = "us-east-1",
        account: str = "123456789012",
        credentials_file: Path | None = None,
        events: Any = None,
        spot_notice_period: timedelta = SPOT_NOTICE_PERIOD,
    ) -> None:
        self.ec2 = ec2
        self.events = events  # EventBridge: where the local EC2 puts its spot and state-change events
        self.spot_notice_period = spot_notice_period
        self.heartbeat_url = heartbeat_url
        self.identities = identities
        self.role_name = role_name
        self.stack_name = stack_name
        self.heartbeat_period = heartbeat_period
        self.lock = lock
        self.region = region
        self.account = account
        self.credentials_file = credentials_file
        self.nodes: dict[str, Node] = {}
        self._seen_per_annex: dict[str, int] = {}
        self._next_beat: dict[str, datetime] = {}

    # --- discovery --------------------------------------------------------------------------------

    def discover(self, now: datetime) -> set[str]:
        """Boot a node for every new instance of the stack; returns the ids of those still running (one
        paginated describe per tick: a node learns it was terminated from it, not from a describe of
        its own, which made 50 nodes 50 DescribeInstances a second in the one-call-at-a-time AWS)."""
        with self.lock:
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {"Name": "tag:annex:stack", "Values": [self.stack_name]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]},
                ]
            )
            found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        running = {i["InstanceId"] for i in found}
        for raw in sorted(found, key=lambda i: (i["LaunchTime"], i["InstanceId"])):
            if raw["InstanceId"] in self.nodes:
                continue
            tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
            annex_id = tags.get("annex:id", "")
            index = self._seen_per_annex.get(annex_id, 0)
            self._seen_per_annex[annex_id] = index + 1
            choices = [c for c in tags.get(SIM_TAG, "busy").split(",") if c.strip()] or ["busy"]
            behaviour, busy_for = parse_behaviour(choices[index % len(choices)])
            lease = tags.get("annex:lease-expires")
            node = Node(
                instance_id=raw["InstanceId"],
                annex_id=annex_id,
                behaviour=behaviour,
                busy_for=busy_for,
                booted_at=now,
                access_key="ASIA" + secrets.token_hex(8).upper(),
                secret_key=secrets.token_urlsafe(30),
                session_token=secrets.token_urlsafe(60),
                lease_expires_at=datetime.fromisoformat(lease.replace("Z", "+00:00")) if lease else None,
            )
            arn = f"arn:aws:sts::{self.account}:assumed-role/{self.role_name}/{node.instance_id}"
            self.identities[node.access_key] = Identity(node.secret_key, arn, node.session_token)
            self.nodes[node.instance_id] = node
            self._next_beat[node.instance_id] = now
            self._publish_credentials(node)
            log.info("node %s of %s booted (%s)", node.instance_id, annex_id, choices[index % len(choices)])
        return running

    def _publish_credentials(self, node: Node) -> None:
        """What IMDS would give the instance: its role session, as a profile named after the instance
        (the e2e tests use it to act as an instance, and to try to act as another one)."""
        if self.credentials_file is None:
            return
        config = configparser.ConfigParser()
        config.read(self.credentials_file)
        config[node.instance_id] = {
            "aws_access_key_id": node.access_key,
            "aws_secret_access_key": node.secret_key,
            "aws_session_token": node.session_token,
        }
        tmp = self.credentials_file.with_suffix(".tmp")
        with tmp.open("w") as fh:
            config.write(fh)
        tmp.chmod(0o600)
        tmp.replace(self.credentials_file)

    # --- the agent --------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        running = self.discover(now)
        for node in list(self.nodes.values()):
            if node.powered_off:
                continue
            if node.instance_id not in running:
                node.powered_off = True
                node.log.append(f"{now:%H:%M:%S} terminated by the cloud")
                continue
            if node.lease_expires_at and now > node.lease_expires_at + DEAD_MAN_MARGIN:
                self.power_off(node, now, "dead-man switch: the lease it last heard has passed")
                continue
            if node.behaviour == "broken-token":
                self.report_problem(node, now, BROKEN_TOKEN_PROBLEM)
                continue
            if node.behaviour == "spot-interrupt" and self.spot_market(node, now):
                continue
            if node.behaviour == "silent" or now < self._next_beat[node.instance_id]:
                continue
            self._next_beat[node.instance_id] = now + timedelta(seconds=self.heartbeat_period)
            self.heartbeat(node, now)

    # --- the local EC2's spot market ----------------------------------------------------------------

    def spot_market(self, node: Node, now: datetime) -> bool:
        """EC2 interrupts a `spot-interrupt` node once its time comes, then reclaims it after the notice
        period. True when the node is gone (nothing more for it to do this tick)."""
        if node.spot_notice is None and now - node.booted_at >= node.busy_for:
            node.spot_notice = "interruption"
            node.reclaim_at = now + self.spot_notice_period
            self._put_events([spot_warning_entry(node.instance_id, at=now)])
            # The agent's spot-watch sees the notice within seconds: condor_drain -quick vacates the
            # jobs, and the notice is reported at once (not at the next minute's heartbeat).
            node.draining = True
            node.log.append(f"{now:%H:%M:%S} spot interruption notice: draining, jobs vacated")
            self._next_beat[node.instance_id] = now
            return False
        if node.reclaim_at is not None and now >= node.reclaim_at:
            node.powered_off = True
            node.log.append(f"{now:%H:%M:%S} reclaimed by EC2 (spot interruption)")
            log.info("node %s reclaimed by EC2 (spot interruption)", node.instance_id)
            with self.lock:
                self.ec2.terminate_instances(InstanceIds=[node.instance_id])
            self._put_events(
                [
                    state_change_entry(node.instance_id, state, at=now)
                    for state in ("shutting-down", "terminated")
                ]
            )
            return True
        return False

    def _put_events(self, entries: list[Any]) -> None:
        if self.events is None:
            return
        with self.lock:
            resp = self.events.put_events(Entries=entries)
        if resp.get("FailedEntryCount"):
            log.error("EventBridge refused EC2 events: %s", resp.get("Entries"))

    def _body(self, node: Node, now: datetime, problem: str | None = None) -> bytes:
        claimed, total = count_slots(node.slot_ads(now))
        body: dict[str, Any] = {
            "instance_id": node.instance_id,
            "annex_id": node.annex_id,
            "claimed_slots": claimed,
            "total_slots": total,
        }
        if problem:
            body["problem"] = problem
        if node.spot_notice:
            body["spot_notice"] = node.spot_notice
        return json.dumps(body).encode()

    def report_problem(self, node: Node, now: datetime, problem: str) -> None:
        """`annex-heartbeat --report-problem`, then the boot script powers the instance off."""
        status, _answer = self.signed_post(node, self._body(node, now, problem))
        node.heartbeats += 1
        node.log.append(f"{now:%H:%M:%S} reported a boot problem ({status}): {problem}")
        self.power_off(node, now, f"boot check failed: {problem}")

    def heartbeat(self, node: Node, now: datetime) -> dict[str, Any] | None:
        status, answer = self.signed_post(node, self._body(node, now))
        node.heartbeats += 1
        if status != 200 or not isinstance(answer, dict):
            node.log.append(f"{now:%H:%M:%S} heartbeat answered {status}")
            return None
        action = answer.get("action", "run")
        node.last_action = action
        if answer.get("lease_expires_at"):
            node.lease_expires_at = datetime.fromisoformat(answer["lease_expires_at"].replace("Z", "+00:00"))
        if action == "terminate":
            self.power_off(node, now, f"told to terminate: {answer.get('reason', '')}".strip())
        elif action == "drain" and not node.draining:
            node.draining = True
            node.log.append(f"{now:%H:%M:%S} draining: {answer.get('reason', '')}")
        elif action == "run" and node.draining:
            node.draining = False  # the lease was extended: take jobs again (condor_drain -cancel)
            node.log.append(f"{now:%H:%M:%S} drain cancelled")
        return answer

    def signed_post(self, node: Node, body: bytes) -> tuple[int, Any]:
        headers = sign_headers(
            "POST",
            self.heartbeat_url,
            access_key=node.access_key,
            secret_key=node.secret_key,
            session_token=node.session_token,
            region=self.region,
            body=body,
            headers={"Content-Type": "application/json"},
        )
        prepared = urllib.request.Request(  # noqa: S310 - the local gateway's http URL
            self.heartbeat_url, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(prepared, timeout=10) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, OSError) as exc:
            log.warning("node %s could not reach the heartbeat route: %s", node.instance_id, exc)
            return 0, None

    def power_off(self, node: Node, now: datetime, why: str) -> None:
        node.powered_off = True
        node.log.append(f"{now:%H:%M:%S} powered off: {why}")
        log.info("node %s powered off: %s", node.instance_id, why)
        with self.lock:
            self.ec2.terminate_instances(InstanceIds=[node.instance_id])

    def run(self, stop: threading.Event, period: float) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("simulated nodes: tick failed; continuing")
            stop.wait(period)
