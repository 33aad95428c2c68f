"""Money as template.yaml deploys it: settings that validate against the template's own environment,
narrow roles, log groups, and alarms on the figures the code emits."""

from __future__ import annotations

from pathlib import Path

import pytest
from annex.core.config import LeaseCheckSettings, NoticesSettings, PricesSettings, RequestSettings
from annex_local.template import load_template, resolve_environment

SETTINGS = {
    "PricesFunction": PricesSettings,
    "NoticesFunction": NoticesSettings,
    "LeaseCheckFunction": LeaseCheckSettings,
    "RequestFunction": RequestSettings,
}


@pytest.fixture(scope="module")
def resources():
    return load_template()["Resources"]


def statements(resource):
    return [s for policy in resource["Properties"]["Policies"] for s in policy["Statement"]]


def actions(resource) -> set[str]:
    out: set[str] = set()
    for s in statements(resource):
        out.update([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    return out


@pytest.mark.parametrize(("logical_id", "model"), SETTINGS.items())
def test_settings_validate_against_the_template(logical_id, model):
    env = resolve_environment(
        logical_id,
        table_name="t-table",
        stack_name="s",
        overrides={
            "LeaseTimerQueue": "https://sqs.local/q",
            "AnnexInstanceProfile.Arn": "arn:aws:iam::123456789012:instance-profile/annex-instance",
        },
    )
    settings = model.from_env(env)
    assert settings.region == "us-east-1"


def test_the_prices_function_reads_prices_and_writes_only_the_table(resources):
    assert actions(resources["PricesFunction"]) == {
        "pricing:GetProducts",
        "ec2:DescribeSpotPriceHistory",
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    [schedule] = resources["PricesFunction"]["Properties"]["Events"].values()
    assert schedule["Type"] == "Schedule"


def test_notices_go_only_to_the_stacks_bus_and_subscriptions_only_to_the_notice_topic(resources):
    for fn in ("LeaseCheckFunction", "NoticesFunction"):
        [put] = [s for s in statements(resources[fn]) if s["Action"] == "events:PutEvents"]
        assert put["Resource"] == {"Fn::GetAtt": ["AnnexEventBus", "Arn"]}
    [sub] = [s for s in statements(resources["RequestFunction"]) if s["Action"] == "sns:Subscribe"]
    assert sub["Resource"] == {"Ref": "NoticeTopic"}
    assert "ec2:TerminateInstances" not in actions(resources["NoticesFunction"])


def test_the_notice_rule_sends_annex_events_to_the_topic_and_only_the_rule_may_publish(resources):
    rule = resources["NoticeRule"]["Properties"]
    assert rule["EventPattern"] == {"source": ["annex"]}
    assert [t["Arn"] for t in rule["Targets"]] == [{"Ref": "NoticeTopic"}]
    [allow] = resources["NoticeTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["NoticeRule", "Arn"]}


@pytest.mark.parametrize("fn", ["PricesFunction", "NoticesFunction"])
def test_each_money_function_has_a_log_group_and_an_errors_alarm(resources, fn):
    groups = [r for r in resources.values() if r["Type"] == "AWS::Logs::LogGroup"]
    assert any(fn in str(g["Properties"]["LogGroupName"]) for g in groups)
    alarms = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert any(
        a["Properties"].get("Dimensions") == [{"Name": "FunctionName", "Value": {"Ref": fn}}] for a in alarms
    )


def test_the_spend_alarms_watch_what_the_lease_check_emits(resources):
    source = (Path(__file__).parents[2] / "functions/lease_check/app.py").read_text()
    for alarm, threshold in (
        ("LiveInstancesAlarm", "LiveInstancesAlarmThreshold"),
        ("SpendRateAlarm", "SpendRateAlarmThreshold"),
    ):
        props = resources[alarm]["Properties"]
        assert f'name="{props["MetricName"]}"' in source
        assert props["Namespace"] == "Annex"
        assert props["Threshold"] == {"Ref": threshold}
