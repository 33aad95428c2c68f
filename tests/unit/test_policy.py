from datetime import UTC, datetime, timedelta

import pytest
from annex.api.policy import resolve_create, resolve_extension
from annex.core.config import Policy
from annex.core.errors import PolicyViolation
from annex.core.models import CreateAnnexRequest, Market

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY = Policy.from_env(
    {
        "ALLOWED_INSTANCE_TYPES": "c7i.xlarge, m7i.xlarge,c6i.xlarge",
        "DEFAULT_INSTANCE_TYPE": "c7i.xlarge",
        "MAX_INSTANCES_PER_ANNEX": "10",
        "MAX_LIVE_INSTANCES_PER_OWNER": "20",
        "MAX_LIVE_INSTANCES": "100",
        "MAX_LEASE": "24h",
        "DEFAULT_LEASE": "4h",
        "MIN_LEASE": "10m",
        "DEFAULT_IDLE_TIMEOUT": "20m",
        "MIN_IDLE_TIMEOUT": "5m",
        "MIN_EXTENSION": "5m",
    }
)


def test_defaults_fill_what_the_researcher_left_out():
    spec = resolve_create(CreateAnnexRequest(name="run", count=3), POLICY)
    assert spec.instance_types == ("c7i.xlarge",)
    assert spec.lease == timedelta(hours=4)
    assert spec.idle_timeout == timedelta(minutes=20)
    assert spec.market is Market.ON_DEMAND


def test_spot_without_a_type_may_use_every_allowed_type_default_first():
    spec = resolve_create(CreateAnnexRequest(name="run", count=3, market="spot"), POLICY)
    assert spec.instance_types == ("c7i.xlarge", "m7i.xlarge", "c6i.xlarge")


@pytest.mark.parametrize(
    ("body", "field", "hint"),
    [
        ({"count": 11}, "count", "at most 10"),
        ({"instance_type": "p5.48xlarge"}, "instance_type", "c7i.xlarge, m7i.xlarge, c6i.xlarge"),
        ({"lease": "25h"}, "lease", "at most 1d"),
        ({"lease": "5m"}, "lease", "at least 10m"),
        ({"idle_timeout": "1m"}, "idle_timeout", "at least 5m"),
        ({"lease": "30m", "idle_timeout": "1h"}, "idle_timeout", "longer than the lease"),
    ],
)
def test_limits_name_the_field_and_what_to_do(body, field, hint):
    with pytest.raises(PolicyViolation, match=hint) as info:
        resolve_create(CreateAnnexRequest.model_validate({"name": "run", "count": 1, **body}), POLICY)
    assert info.value.field == field


def test_extend_by_counts_from_the_current_expiry_not_from_now():
    current = NOW + timedelta(hours=1)
    ext = resolve_extension(current, by=timedelta(hours=2), until=None, now=NOW, policy=POLICY)
    assert ext.new_expiry == NOW + timedelta(hours=3)
    assert not ext.capped


def test_extend_past_the_maximum_is_capped_and_says_so():
    ext = resolve_extension(
        NOW + timedelta(hours=20), by=timedelta(hours=10), until=None, now=NOW, policy=POLICY
    )
    assert ext.new_expiry == NOW + timedelta(hours=24)
    assert ext.capped
    assert "capped" in ext.message


def test_extend_to_an_earlier_time_is_refused():
    with pytest.raises(PolicyViolation, match="not later") as info:
        resolve_extension(
            NOW + timedelta(hours=3), by=None, until=NOW + timedelta(hours=2), now=NOW, policy=POLICY
        )
    assert info.value.field == "until"


def test_extend_when_already_at_the_cap_is_refused():
    with pytest.raises(PolicyViolation, match="already reaches the maximum"):
        resolve_extension(
            NOW + timedelta(hours=24), by=timedelta(hours=1), until=None, now=NOW, policy=POLICY
        )


def test_inconsistent_administrator_settings_fail_at_cold_start():
    env = {**POLICY.model_dump(by_alias=True), "DEFAULT_INSTANCE_TYPE": "x1.32xlarge"}
    env = {
        k: ",".join(v)
        if isinstance(v, tuple)
        else str(int(v.total_seconds()))
        if isinstance(v, timedelta)
        else str(v)
        for k, v in env.items()
    }
    with pytest.raises(ValueError, match="DEFAULT_INSTANCE_TYPE must be one of ALLOWED_INSTANCE_TYPES"):
        Policy.from_env(env)
