"""Every action, resource type and condition key the template grants exists in AWS's service
authorization reference (as shipped by policy_sentry): a misspelt action or a condition key that does not
apply to the action is silently never matched by IAM, so the grant or the restriction would not hold."""

from __future__ import annotations

from typing import Any

import pytest
from annex_local.template import load_template
from policy_sentry.querying.actions import get_action_data

GLOBAL_KEY_PREFIXES = ("aws:",)


def statements() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for logical_id, res in load_template()["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            docs = [p for p in props.get("Policies", []) if isinstance(p, dict) and "Statement" in p]
        elif res["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif res["Type"] == "AWS::IAM::Policy":
            docs = [props["PolicyDocument"]]
        else:
            continue
        out += [(f"{logical_id}.{s.get('Sid')}", s) for d in docs for s in d["Statement"]]
    return out


STATEMENTS = statements()


def actions(statement: dict[str, Any]) -> list[str]:
    a = statement["Action"]
    return [a] if isinstance(a, str) else a


def reference(action: str) -> list[dict[str, Any]]:
    service, name = action.split(":")
    data = get_action_data(service, name)
    return data.get(service, []) if data else []


@pytest.mark.parametrize(("where", "statement"), STATEMENTS, ids=[w for w, _ in STATEMENTS])
def test_granted_actions_exist(where, statement):
    for action in actions(statement):
        assert reference(action), f"{where}: {action} is not an IAM action"


@pytest.mark.parametrize(("where", "statement"), STATEMENTS, ids=[w for w, _ in STATEMENTS])
def test_condition_keys_apply_to_the_actions(where, statement):
    keys = {k for op in (statement.get("Condition") or {}).values() for k in op}
    for key in keys:
        if key.startswith(GLOBAL_KEY_PREFIXES):
            continue
        for action in actions(statement):
            rows = reference(action)
            valid = {k.lower() for r in rows for k in r["condition_keys"]}
            assert key.lower() in valid, f"{where}: {key} does not apply to {action}"


def test_transactions_are_not_an_iam_action():
    # What tests/iam/authorization.py relies on: a transaction is authorized per item action.
    assert reference("dynamodb:TransactWriteItems") == []
    assert reference("dynamodb:ConditionCheckItem")
