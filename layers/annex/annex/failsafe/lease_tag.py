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
    id) in step with the record `annex` as it now stands."""
    ids = (
        list(instance_ids)
        if instance_ids is not None
        else [t.instance_id for t in ec2.live_instances(annex.id)]
    )
    if ids:
        ec2.tag(ids, lease_tags(annex))
