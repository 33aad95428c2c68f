"""The identity and global-cap parameters as the request function reads them: the template's defaults
validate, and a misconfiguration fails the cold start naming the variable."""

import pytest
from annex.core.config import RequestSettings
from annex_local.template import resolve_environment
from pydantic import ValidationError


def env(**overrides: str) -> dict[str, str]:
    return resolve_environment(
        "RequestFunction",
        table_name="t-annex",
        stack_name="annex",
        overrides={
            "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/annex-instance",
            "LeaseTimerQueue": "",
            **overrides,
        },
    )


def test_the_templates_defaults_allow_no_unbound_roles_and_cap_the_stack():
    settings = RequestSettings.from_env(env())
    assert settings.session_bound_roles == ()
    assert settings.shared_instance_roles == ()
    assert settings.max_live_instances >= settings.max_live_instances_per_owner


def test_role_lists_reach_the_identity_policy():
    settings = RequestSettings.from_env(
        env(SessionBoundRoles="Researcher*,Lab", SharedInstanceRoles="HeadNode")
    )
    assert settings.identity.session_bound_roles == ("Researcher*", "Lab")
    assert settings.identity.shared_instance_roles == ("HeadNode",)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"MaxLiveInstances": "50", "MaxLiveInstancesPerOwner": "100"}, "MAX_LIVE_INSTANCES"),
        ({"SessionBoundRoles": "arn:aws:iam::123456789012:role/Researcher"}, "SESSION_BOUND_ROLES"),
        ({"SessionBoundRoles": "*"}, "SESSION_BOUND_ROLES"),
        ({"SharedInstanceRoles": "AWSReservedSSO_*"}, "SHARED_INSTANCE_ROLES"),
        ({"SessionBoundRoles": "Lab", "SharedInstanceRoles": "Lab"}, "SHARED_INSTANCE_ROLES"),
    ],
)
def test_misconfigured_identity_parameters_fail_naming_the_variable(overrides, named):
    with pytest.raises(ValidationError, match=named):
        RequestSettings.from_env(env(**overrides))


def test_the_global_cap_is_required():
    values = env()
    del values["MAX_LIVE_INSTANCES"]
    with pytest.raises(ValidationError, match="MAX_LIVE_INSTANCES"):
        RequestSettings.from_env(values)
