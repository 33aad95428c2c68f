"""The `annex:lease-expires` tag: each instance carries its annex's lease expiry, the last line of
defence the orphan sweep reads when a record is lost. This module alone decides its value; it is
written at launch (`lease_tags`) and moved whenever the record's lease moves (`keep_lease_tag`)."""

from __future__ import annotations

from collections.abc import Sequence

from annex.aws.inventory import TAG_LEASE, Ec2Inventory
from annex.core.clock import to_iso
from annex.core.models import Annex


def lease_tags(annex: Annex) -> dict[str, str]:
    """The tag every instance of the annex is launched with."""
    return {TAG_LEASE: to_iso(annex.lease_expires_at)}


def keep_lease_tag(ec2: Ec2Inventory, annex: Annex, instance_ids: Sequence[str] | None = None) -> None:
    """Bring the lease tag of this annex's instances (the given ones, or every live one tagged with its
    id whose tag differs) in step with the record `annex` as it now stands. The tag's granularity is the
    second of its ISO value: an instance already carrying it is not re-tagged (a retried extension costs
    one DescribeInstances, no CreateTags); the API refuses lease moves under MinExtension, so a re-tag
    happens at most once per such step."""
    wanted = lease_tags(annex)
    if instance_ids is not None:
        ids = list(instance_ids)
    else:
        ids = [
            t.instance_id
            for t in ec2.live_instances(annex.id)
            if t.lease_expires_at is None or to_iso(t.lease_expires_at) != wanted[TAG_LEASE]
        ]
    if ids:
        ec2.tag(ids, wanted)
