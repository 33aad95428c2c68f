"""Annex and instance records for unit tests, with plain defaults a test overrides."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from annex.core.models import Annex, AnnexState, Instance, InstanceState, Market

T0 = datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
ANNEX_ID = "ax-0123456789abcdef"
INSTANCE_ID = "i-0123456789abcdef0"


def make_annex(**overrides: Any) -> Annex:
    base = {
        "id": ANNEX_ID,
        "name": "run",
        "owner": "arn:aws:iam::123456789012:user/alice",
        "state": AnnexState.RUNNING,
        "count": 1,
        "instance_types": ["c7i.xlarge"],
        "market": Market.ON_DEMAND,
        "lease_expires_at": T0 + timedelta(hours=1),
        "idle_timeout_seconds": 1200,
        "created_at": T0,
        "updated_at": T0,
    }
    return Annex.model_validate({**base, **overrides})


def make_instance(**overrides: Any) -> Instance:
    base = {
        "instance_id": INSTANCE_ID,
        "annex_id": ANNEX_ID,
        "instance_type": "c7i.xlarge",
        "market": Market.ON_DEMAND,
        "state": InstanceState.RUNNING,
        "launched_at": T0,
    }
    return Instance.model_validate({**base, **overrides})
