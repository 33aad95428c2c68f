"""Settings come from the template's environment; a missing variable fails the cold start by name."""

import pytest
from annex.core.config import RequestSettings
from annex_local.template import resolve_environment
from pydantic import ValidationError

PROFILE = {"AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/annex-instance"}


def test_the_templates_defaults_make_valid_settings():
    env = resolve_environment(
        "RequestFunction",
        table_name="t-annex",
        stack_name="annex",
        overrides={**PROFILE, "LeaseTimerQueue": ""},
    )
    settings = RequestSettings.from_env(env)
    assert settings.default_instance_type in settings.allowed_instance_types
    assert settings.max_lease.total_seconds() == 24 * 3600
    assert settings.admin_principals == ()


def test_a_missing_variable_is_named():
    env = resolve_environment(
        "RequestFunction",
        table_name="t-annex",
        stack_name="annex",
        overrides={**PROFILE, "LeaseTimerQueue": ""},
    )
    del env["MAX_LEASE"]
    with pytest.raises(ValidationError, match="MAX_LEASE"):
        RequestSettings.from_env(env)
