"""EC2 inventory, for the sweeps and every termination: find, tag and terminate the instances this stack
launched. Throttling is retried by botocore's standard retry mode (see clients.py). Launching is the
launcher's own client (annex.launch.capacity).

"Launched by this stack" means: tagged `annex:stack` = the stack AND launched with the stack's instance
profile. Anyone in the account with ec2:CreateTags can write the tag; only the launch role (PassRole on
the stack's instance role) can start an instance with the profile. Every DescribeInstances filters on
both (`iam-instance-profile.arn`), so an instance carrying the tag alone is never seen, tagged or
terminated here; the roles' `ec2:InstanceProfile` conditions enforce the same on the IAM side."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from annex.core.clock import parse_time

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG_ID = "annex:id"
TAG_NAME = "annex:name"
TAG_OWNER = "annex:owner"
TAG_STACK = "annex:stack"
TAG_LEASE = "annex:lease-expires"
FILTER_VALUES_MAX = 200  # values per DescribeInstances filter (the API's limit)
LIVE_EC2_STATES = ("pending", "running", "stopping", "stopped")
TERMINATE_BATCH = 1000  # instance ids per TerminateInstances (EC2's documented maximum per call)
TAG_BATCH = 500  # resource ids per CreateTags
PAGE_SIZE = 1000  # DescribeInstances MaxResults (EC2's maximum)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def literal_filter_value(value: str) -> str:
    """A filter value that matches only itself: EC2 filter values treat `*` and `?` as wildcards and `\\`
    as their escape (an IAM path may contain any of them)."""
    return "".join("\\" + c if c in "*?\\" else c for c in value)


@dataclass(frozen=True)
class TaggedInstance:
    instance_id: str
    state: str
    annex_id: str | None
    lease_expires_at: datetime | None
    launch_time: datetime | None
    instance_type: str | None = None
    zone: str | None = None


class Ec2Inventory:
    """DescribeInstances, CreateTags and TerminateInstances on the instances tagged by this stack."""

    def __init__(self, client: EC2Client, stack_name: str, *, instance_profile_arn: str) -> None:
        if not instance_profile_arn:
            raise ValueError("the inventory needs the stack's instance profile ARN")
        self._ec2 = client
        self.stack_name = stack_name
        self.instance_profile_arn = instance_profile_arn
        self.calls = 0  # EC2 API calls made, for the sweep metrics and benchmarks

    def live_instances_of(self, annex_ids: Iterable[str]) -> Iterator[TaggedInstance]:
        """The not-terminated instances of these annexes: one paginated DescribeInstances per
        FILTER_VALUES_MAX annexes, however many annexes there are (the sweeps batch their work)."""
        for batch in chunks(sorted(set(annex_ids)), FILTER_VALUES_MAX):
            yield from self.live_instances(annex_ids=batch)

    def live_instances(
        self, annex_id: str | None = None, *, annex_ids: Sequence[str] = ()
    ) -> Iterator[TaggedInstance]:
        """Every not-terminated instance tagged by this stack (optionally: of one annex, or of up to
        FILTER_VALUES_MAX annexes). Paginated."""
        ids = [annex_id] if annex_id else list(annex_ids)
        if ids:
            return self._describe({"Name": f"tag:{TAG_ID}", "Values": [literal_filter_value(i) for i in ids]})
        return self._describe()

    def live_instances_matching(self, annex_id_patterns: Sequence[str]) -> Iterator[TaggedInstance]:
        """The not-terminated instances of this stack whose `annex:id` tag matches one of these EC2
        wildcard patterns (at most FILTER_VALUES_MAX): the orphan sweep's segments."""
        if not annex_id_patterns or len(annex_id_patterns) > FILTER_VALUES_MAX:
            raise ValueError(f"1 to {FILTER_VALUES_MAX} patterns per DescribeInstances filter")
        return self._describe({"Name": f"tag:{TAG_ID}", "Values": list(annex_id_patterns)})

    def _filters(self) -> list[Any]:
        return [
            {"Name": f"tag:{TAG_STACK}", "Values": [literal_filter_value(self.stack_name)]},
            {"Name": "iam-instance-profile.arn", "Values": [literal_filter_value(self.instance_profile_arn)]},
            {"Name": "instance-state-name", "Values": list(LIVE_EC2_STATES)},
        ]

    def _describe(self, *extra: Any) -> Iterator[TaggedInstance]:
        paginator = self._ec2.get_paginator("describe_instances")
        filters = [*self._filters(), *extra]
        pages = paginator.paginate(Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE})
        for page in pages:
            self.calls += 1
            for reservation in page.get("Reservations", []):
                for raw in reservation.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                    lease = tags.get(TAG_LEASE)
                    try:
                        lease_at = parse_time(lease) if lease else None
                    except ValueError:
                        lease_at = None  # a mangled tag counts as no lease: the sweep treats it as expired
                    yield TaggedInstance(
                        instance_id=raw["InstanceId"],
                        state=raw.get("State", {}).get("Name", "unknown"),
                        annex_id=tags.get(TAG_ID),
                        lease_expires_at=lease_at,
                        launch_time=raw.get("LaunchTime"),
                        instance_type=raw.get("InstanceType"),
                        zone=raw.get("Placement", {}).get("AvailabilityZone"),
                    )

    def terminate(self, instance_ids: Iterable[str]) -> list[str]:
        """TerminateInstances in batches. Ids EC2 no longer knows are skipped, not fatal.
        Returns the ids EC2 accepted."""
        ids = sorted(set(instance_ids))
        accepted: list[str] = []
        for batch in chunks(ids, TERMINATE_BATCH):
            accepted.extend(self._terminate_batch(list(batch)))
        return accepted

    def _terminate_batch(self, ids: list[str]) -> list[str]:
        while ids:
            try:
                self.calls += 1
                resp = self._ec2.terminate_instances(InstanceIds=ids)
                return [i["InstanceId"] for i in resp.get("TerminatingInstances", [])]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "InvalidInstanceID.NotFound":
                    raise
                message = exc.response["Error"].get("Message", "")
                missing = [i for i in ids if i in message]
                if not missing:
                    raise
                ids = [i for i in ids if i not in missing]
        return []

    def tag(self, instance_ids: Sequence[str], tags: dict[str, str]) -> None:
        """Set these tags on these instances (CreateTags, 500 instances per call)."""
        for batch in chunks(list(instance_ids), TAG_BATCH):
            self.calls += 1
            self._ec2.create_tags(
                Resources=list(batch), Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
            )
