"""EC2 capacity, for the launcher: RunInstances, CreateFleet (instant) and the launch templates fleets
need. ClientError codes become domain exceptions here; throttling, 5xx and lost connections are retried
with backoff through the injected `sleep` (the client, clients.ec2_launch, makes one attempt per call)."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from annex.core.errors import CapacityUnavailable, ConcurrentUpdate, LaunchRejected, Throttled
from annex.core.models import Instance, InstanceState, Market

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

MAX_LAUNCH_BATCH = 100  # instances per RunInstances / CreateFleet call
# EC2 has no room (or no quota) for this request here: another subnet or type, or fewer instances, may fit.
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientFreeAddressesInSubnet",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "UnfulfillableCapacity",
        "Unsupported",
    }
)
# ...of those, the ones a smaller request in the same subnet will not fix.
NEVER_HERE_CODES = frozenset({"Unsupported", "InsufficientFreeAddressesInSubnet"})
# Slow down and try the same call again (with the same client token).
RETRY_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
    }
)
# IMDSv2 only, and not reachable from containers or forwarded hops on the instance.
IMDS_V2 = {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1}


def tag_specifications(tags: dict[str, str], *resource_types: str) -> list[Any]:
    """TagSpecifications: the same tags on each resource type, applied by EC2 at creation."""
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    return [{"ResourceType": rt, "Tags": pairs} for rt in resource_types]


@dataclass(frozen=True)
class InstanceSpec:
    """What every instance of one annex gets, whatever the subnet, type or market."""

    image_id: str
    instance_profile_arn: str
    security_group_id: str
    user_data: str
    tags: dict[str, str]

    def tag_specifications(self, *resource_types: str) -> list[Any]:
        return tag_specifications(self.tags, *resource_types)

    def launch_template_data(self) -> dict[str, Any]:
        return {
            "ImageId": self.image_id,
            "IamInstanceProfile": {"Arn": self.instance_profile_arn},
            "SecurityGroupIds": [self.security_group_id],
            "UserData": base64.b64encode(self.user_data.encode()).decode(),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": IMDS_V2,
            "TagSpecifications": self.tag_specifications("instance", "volume"),
        }


@dataclass(frozen=True)
class Slot:
    """Where an instance may start: one instance type in one subnet (one availability zone)."""

    instance_type: str
    subnet_id: str
    zone: str


@dataclass(frozen=True)
class Launched:
    instance_id: str
    instance_type: str
    zone: str | None
    market: str  # "on-demand" or "spot"
    launch_time: datetime | None = None

    def record(self, annex_id: str, at: datetime, *, replaces: str | None = None) -> Instance:
        """The instance's record as written when EC2 answers: pending, launched `at`."""
        return Instance(
            instance_id=self.instance_id,
            annex_id=annex_id,
            instance_type=self.instance_type,
            zone=self.zone,
            market=Market(self.market),
            state=InstanceState.PENDING,
            launched_at=at,
            replaces=replaces,
        )


@dataclass(frozen=True)
class Refusal:
    """EC2 declined (part of) a request: the code, its message, and where."""

    ec2_code: str
    message: str
    instance_type: str | None
    zone: str | None

    @property
    def capacity(self) -> bool:
        return self.ec2_code in CAPACITY_CODES


@dataclass(frozen=True)
class FleetResult:
    launched: list[Launched]
    refusals: list[Refusal]


class Ec2Capacity:
    """RunInstances, CreateFleet (instant) and the launch templates fleets need.

    Each call is made with the caller's deterministic client token, so repeating it after a timeout or a
    crash returns the first call's instances instead of launching more. The client (clients.ec2_launch)
    makes one attempt per call; here throttling, 5xx and lost connections are retried with capped
    exponential backoff and full jitter, capacity errors raise CapacityUnavailable at once (the caller
    moves on), and anything else raises LaunchRejected (the administrator must act)."""

    def __init__(
        self,
        client: EC2Client,
        *,
        attempts: int = 6,
        base_delay: float = 1.0,
        max_delay: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[float, float], float] | None = None,
    ) -> None:
        self._ec2 = client
        self._sleep = sleep
        # backoff jitter, not cryptography
        self._jitter = jitter or random.Random().uniform  # noqa: S311
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.calls = 0  # EC2 API calls made (attempts included), for the benchmarks

    def _call(self, operation: Callable[..., Any], **params: Any) -> Any:
        name = getattr(operation, "__name__", "call")
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            self.calls += 1
            try:
                return operation(**params)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = error.get("Code", "Unknown")
                message = error.get("Message", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in CAPACITY_CODES:
                    raise CapacityUnavailable(f"{code}: {message}", ec2_code=code) from exc
                if code == "IdempotentParameterMismatch":
                    raise ConcurrentUpdate(
                        f"EC2 {name}: the client token was used with other parameters (the annex changed "
                        "between attempts); retry"
                    ) from exc
                if code not in RETRY_CODES and status < 500:
                    raise LaunchRejected(f"{code}: {message}", ec2_code=code) from exc
                last = exc
            except (BotoConnectionError, HTTPClientError) as exc:
                last = exc  # the call may have gone through: the same client token makes a retry safe
            if attempt < self.attempts:
                self._sleep(self._delay(attempt))
        raise Throttled(f"EC2 {name} still failing after {self.attempts} attempts: {last}") from last

    def _delay(self, attempt: int) -> float:
        return self._jitter(0, min(self.max_delay, self.base_delay * 2**attempt))

    def subnet_zones(self, subnet_ids: Sequence[str]) -> dict[str, str]:
        """Subnet id -> availability zone. LaunchRejected names an unknown subnet."""
        resp = self._call(self._ec2.describe_subnets, SubnetIds=list(subnet_ids))
        return {s["SubnetId"]: s["AvailabilityZone"] for s in resp.get("Subnets", [])}

    def run_instances(self, spec: InstanceSpec, slot: Slot, count: int, token: str) -> list[Launched]:
        """Exactly `count` on-demand instances in `slot`, or CapacityUnavailable/LaunchRejected."""
        resp = self._call(
            self._ec2.run_instances,
            ImageId=spec.image_id,
            InstanceType=slot.instance_type,
            MinCount=count,
            MaxCount=count,
            SubnetId=slot.subnet_id,
            SecurityGroupIds=[spec.security_group_id],
            IamInstanceProfile={"Arn": spec.instance_profile_arn},
            UserData=spec.user_data,
            InstanceInitiatedShutdownBehavior="terminate",
            MetadataOptions=IMDS_V2,
            TagSpecifications=spec.tag_specifications("instance", "volume"),
            ClientToken=token,
        )
        return [
            Launched(
                instance_id=raw["InstanceId"],
                instance_type=raw.get("InstanceType", slot.instance_type),
                zone=raw.get("Placement", {}).get("AvailabilityZone") or slot.zone,
                market="on-demand",
                launch_time=raw.get("LaunchTime"),
            )
            for raw in resp.get("Instances", [])
        ]

    def create_launch_template(self, name: str, spec: InstanceSpec, tags: dict[str, str]) -> None:
        """The template an instant fleet launches from. A template left by an interrupted launch is
        replaced, so the fleet never starts instances with stale user data or tags."""
        params: dict[str, Any] = {
            "LaunchTemplateName": name,
            "LaunchTemplateData": spec.launch_template_data(),
            "TagSpecifications": tag_specifications(tags, "launch-template"),
        }
        try:
            self._call(self._ec2.create_launch_template, **params)
        except LaunchRejected as exc:
            if exc.ec2_code != "InvalidLaunchTemplateName.AlreadyExistsException":
                raise
            self.delete_launch_template(name)
            self._call(self._ec2.create_launch_template, **params)

    def delete_launch_template(self, name: str) -> None:
        try:
            self._call(self._ec2.delete_launch_template, LaunchTemplateName=name)
        except LaunchRejected as exc:
            if not exc.ec2_code.startswith("InvalidLaunchTemplateName.NotFound"):
                raise

    def create_fleet(
        self,
        template_name: str,
        slots: Sequence[Slot],
        count: int,
        token: str,
        tags: dict[str, str],
    ) -> FleetResult:
        """Up to `count` spot instances from an `instant` fleet, capacity-optimized across every slot
        (type x subnet). EC2 picks the deepest capacity pools and reports what it could not launch."""
        zones = {s.subnet_id: s.zone for s in slots}
        resp = self._call(
            self._ec2.create_fleet,
            Type="instant",
            ClientToken=token,
            LaunchTemplateConfigs=[
                {
                    "LaunchTemplateSpecification": {
                        "LaunchTemplateName": template_name,
                        "Version": "$Latest",
                    },
                    "Overrides": [{"InstanceType": s.instance_type, "SubnetId": s.subnet_id} for s in slots],
                }
            ],
            TargetCapacitySpecification={
                "TotalTargetCapacity": count,
                "SpotTargetCapacity": count,
                "DefaultTargetCapacityType": "spot",
            },
            SpotOptions={
                "AllocationStrategy": "capacity-optimized",
                "InstanceInterruptionBehavior": "terminate",
            },
            TagSpecifications=tag_specifications(tags, "fleet"),
        )
        launched = []
        for group in resp.get("Instances", []):
            override = group.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
            for instance_id in group.get("InstanceIds", []):
                launched.append(
                    Launched(
                        instance_id=instance_id,
                        instance_type=group.get("InstanceType") or override.get("InstanceType", ""),
                        zone=zones.get(override.get("SubnetId", "")),
                        market="spot" if group.get("Lifecycle", "spot") == "spot" else "on-demand",
                    )
                )
        refusals = []
        for error in resp.get("Errors", []):
            override = error.get("LaunchTemplateAndOverrides", {}).get("Overrides", {})
            refusals.append(
                Refusal(
                    ec2_code=error.get("ErrorCode", "Unknown"),
                    message=error.get("ErrorMessage", ""),
                    instance_type=override.get("InstanceType"),
                    zone=zones.get(override.get("SubnetId", "")),
                )
            )
        return FleetResult(launched=launched, refusals=refusals)
