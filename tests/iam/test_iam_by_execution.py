"""IAM by execution: every AWS call each function made in the integration and e2e tiers (recorded by
tests/iam/recorder.py) must be granted by that function's role in template.yaml, as IAM would authorize
it (tests/iam/authorization.py). The first real deploy would otherwise fail where a test here fails.

Run by `make test-iam` after `make test-integration test-e2e`; grants no recorded call used are written
to .iam-record/unused-grants.txt and printed (-rA shows them).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from annex_local.template import load_template

from tests.iam.authorization import Request, grants, required, resolve

RECORD = os.environ.get("IAM_CALL_RECORD", "")
# The Lambda runtime's own calls (logs, traces) and the stream poller's are made by AWS, not by our code.
RUNTIME_ACTIONS = (
    "logs:",
    "xray:",
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
    "sqs:SendMessage",
)


def function_statements() -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """CodeUri -> (function logical id, its role's statements)."""
    resources = load_template()["Resources"]
    out = {}
    for logical_id, res in resources.items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        props = res["Properties"]
        if "Role" in props:
            role = resources[props["Role"]["Fn::GetAtt"][0]]["Properties"]
            statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        else:
            statements = [s for p in props.get("Policies", []) for s in p["Statement"]]
        out[str(props["CodeUri"])] = (logical_id, statements)
    return out


def load_records() -> list[dict[str, Any]]:
    if not RECORD or not Path(RECORD).exists():
        pytest.fail("no recorded calls: run `make test-integration test-e2e` first (IAM_CALL_RECORD)")
    return [json.loads(line) for line in Path(RECORD).read_text().splitlines() if line.strip()]


RECORDS = load_records() if RECORD and Path(RECORD).exists() else []
PARAMS = load_template()["Parameters"]


def launch_templates(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        r["params"]["LaunchTemplateName"]: r["params"]["LaunchTemplateData"]
        for r in records
        if r["operation"] == "CreateLaunchTemplate"
    }


def test_calls_were_recorded_for_every_function():
    records = load_records()
    recorded = {r["code_uri"] for r in records}
    missing = set(function_statements()) - recorded
    assert not missing, f"no AWS call recorded for {sorted(missing)}: the tiers did not exercise them"


@pytest.mark.parametrize(
    "record",
    RECORDS,
    ids=[f"{r['code_uri'].split('/')[1]}-{r['operation']}-{i}" for i, r in enumerate(RECORDS)],
)
def test_each_recorded_call_is_granted_by_its_functions_role(record):
    logical_id, statements = function_statements()[record["code_uri"]]
    for request in required(record, launch_templates(RECORDS)):
        decision = grants(statements, request, record["env"], PARAMS)
        assert decision.allowed, (
            f"{logical_id} calls {record['service']}:{record['operation']} but its role does not grant "
            f"{request.action} on {request.resource} with {dict(request.context)}"
        )


def test_report_grants_no_recorded_call_used(capsys):
    """Not a gate: the list is for a reviewer (a grant nothing uses is a candidate for removal). It fails
    only if the report cannot be made (no records)."""
    records = load_records()
    templates = launch_templates(records)
    used: dict[str, set[tuple[str | None, str]]] = defaultdict(set)
    not_evaluated: set[str] = set()
    fns = function_statements()
    for record in records:
        logical_id, statements = fns[record["code_uri"]]
        for request in required(record, templates):
            decision = grants(statements, request, record["env"], PARAMS)
            used[logical_id].add((decision.statement, request.action))
            not_evaluated |= decision.not_evaluated
    lines = []
    for logical_id, statements in fns.values():
        for st in statements:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for action in actions:
                if action.startswith(RUNTIME_ACTIONS):
                    continue
                if (st.get("Sid"), action) not in used[logical_id]:
                    where = ", ".join(resolve(st["Resource"], {}, PARAMS))
                    lines.append(f"{logical_id} {st.get('Sid')}: {action} on {where}")
    report = "\n".join(
        [
            f"grants no recorded call used ({len(lines)}):",
            *sorted(lines),
            f"conditions on an existing resource, not evaluated: {', '.join(sorted(not_evaluated))}",
        ]
    )
    Path(RECORD).with_name("unused-grants.txt").write_text(report + "\n")
    with capsys.disabled():
        print("\n" + report)
    assert records


def test_a_call_the_role_does_not_grant_is_refused():
    """The checker itself: the heartbeat role must not pass a TerminateInstances or a transaction delete."""
    _, statements = function_statements()["functions/heartbeat/"]
    env = {"TABLE_NAME": "t", "STACK_NAME": "s"}
    terminate = {"service": "ec2", "operation": "TerminateInstances", "params": {"InstanceIds": ["i-0abc"]}}
    put = {
        "service": "dynamodb",
        "operation": "TransactWriteItems",
        "params": {"TransactItems": [{"Update": {"TableName": "t"}}, {"Delete": {"TableName": "t"}}]},
    }
    assert not grants(statements, required(terminate, {})[0], env, PARAMS).allowed
    update, put_request = required(put, {})
    assert update == Request("dynamodb:UpdateItem", "arn:aws:dynamodb:us-east-1:123456789012:table/t")
    assert grants(statements, update, env, PARAMS).allowed
    assert not grants(statements, put_request, env, PARAMS).allowed
