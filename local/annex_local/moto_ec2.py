"""Two things real EC2 does that moto (5.2) does not, added to moto strictly, for the tests, the benchmarks
and the local stack alike (`install()` is idempotent and patches moto in this process):

1. DescribeInstances' `iam-instance-profile.arn` filter. moto raises NotImplementedError for it. As EC2
   documents it: "the instance profile associated with the instance. Specified as an ARN"; filter values
   are case-sensitive, several values are OR-ed, several filters AND-ed; a value may use EC2's wildcards
   (`*` zero or more characters, `?` exactly one, a backslash escapes the next character). An instance
   without an instance profile matches no value.
2. Every instance of a RunInstances call gets its `IamInstanceProfile` (moto associates it with the first
   instance only), and spot instances launched by an EC2 Fleet carry the launch template's (moto drops
   it), as on EC2: otherwise such instances would match no profile filter.
"""

from __future__ import annotations

import re
from typing import Any

from moto.ec2 import utils
from moto.ec2.models.spot_requests import SpotInstanceRequest
from moto.ec2.responses.instances import InstanceResponse

FILTER = "iam-instance-profile.arn"
_installed = False


def wildcard_pattern(value: str) -> re.Pattern[str]:
    """An EC2 filter value as a full-match regular expression: `*`, `?`, and `\\` escaping the next
    character; everything else literal (no character classes, unlike fnmatch)."""
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "\\")
            out.append(re.escape(nxt))
        elif c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def profile_arn_matches(arn: str | None, values: list[str]) -> bool:
    return arn is not None and any(wildcard_pattern(v).fullmatch(arn) for v in values)


def _instance_profile_arn(instance: Any) -> str | None:
    profile = getattr(instance, "iam_instance_profile", None)  # {"Arn": ..., "Id": ...} once associated
    return profile.get("Arn") if isinstance(profile, dict) else None


def install() -> None:
    global _installed  # noqa: PLW0603 - one patch per process
    if _installed:
        return
    passes = utils.passes_filter_dict

    def passes_filter_dict(instance: Any, filter_dict: dict[str, Any]) -> bool:
        if FILTER in filter_dict:
            if not profile_arn_matches(_instance_profile_arn(instance), list(filter_dict[FILTER])):
                return False
            filter_dict = {k: v for k, v in filter_dict.items() if k != FILTER}
        return bool(passes(instance, filter_dict))

    launch_instance = SpotInstanceRequest.launch_instance

    def launch_with_profile(self: Any) -> Any:
        instance = launch_instance(self)
        spec = getattr(self, "launch_spec", None)
        profile = getattr(spec, "_iam_instance_profile_arn", None)  # the launch template's, as given
        if isinstance(profile, dict) and (profile.get("Arn") or profile.get("Name")):
            self.ec2_backend.associate_iam_instance_profile(
                instance_id=instance.id,
                iam_instance_profile_arn=profile.get("Arn"),
                iam_instance_profile_name=profile.get("Name"),
            )
        return instance

    run_instances = InstanceResponse.run_instances

    def run_every_instance_with_profile(self: Any) -> Any:
        result = run_instances(self)
        arn = self._get_param("IamInstanceProfile.Arn")
        name = None if arn else self._get_param("IamInstanceProfile.Name")
        reservation = getattr(result, "result", None)
        if (arn or name) and reservation is not None:
            associated = self.ec2_backend.iam_instance_profile_associations
            for instance in reservation.instances:
                if instance.id not in associated:
                    self.ec2_backend.associate_iam_instance_profile(
                        instance_id=instance.id, iam_instance_profile_arn=arn, iam_instance_profile_name=name
                    )
        return result

    utils.passes_filter_dict = passes_filter_dict
    InstanceResponse.run_instances = run_every_instance_with_profile  # type: ignore[method-assign]  # filter_reservations looks it up in the module
    SpotInstanceRequest.launch_instance = launch_with_profile  # type: ignore[method-assign]
    _installed = True
