"""The pool token as template.yaml deploys it: an SSM SecureString parameter the stack names but never
creates (no Secrets Manager secret: $0.40 a month of an idle stack), readable by the annex instances'
role alone among the stack's roles, written by the seed's, and only ever *described* by the launch
function (metadata, never the value: with the AWS-managed aws/ssm key, ssm:GetParameter alone decrypts)."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

import pytest
from annex_local.template import load_template, parameter_defaults

STACK = "annex-test"
SUBS = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": STACK,
    "AWS::URLSuffix": "amazonaws.com",
    "PoolTokenParameterName": parameter_defaults()["PoolTokenParameterName"],
}
TOKEN_NAME = f"/annex/{STACK}/pool-token"
TOKEN_ARN = f"arn:aws:ssm:us-east-1:123456789012:parameter{TOKEN_NAME}"
READS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParameterHistory", "ssm:GetParametersByPath")


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    return load_template()["Resources"]


def resolved(value: Any) -> list[str]:
    """ARN patterns a statement's Resource names (!Sub strings over pseudo parameters and parameters)."""
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        text = v["Fn::Sub"] if isinstance(v, dict) and isinstance(v.get("Fn::Sub"), str) else v
        if isinstance(text, str):
            out.append(re.sub(r"\$\{([^}]+)\}", lambda m: SUBS.get(m.group(1), "<unresolved>"), text))
    return out


def role_statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(role or function, statement) for every IAM statement the template writes."""
    out = []
    for name, r in resources.items():
        props = r.get("Properties", {})
        docs = []
        if r["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif r["Type"] == "AWS::IAM::Policy":
            docs = [props["PolicyDocument"]]
        elif r["Type"] == "AWS::Serverless::Function":
            docs = [p for p in props.get("Policies", []) if isinstance(p, dict) and "Statement" in p]
        for doc in docs:
            out += [(name, st) for st in doc["Statement"]]
    return out


def actions(statement: dict[str, Any]) -> list[str]:
    a = statement["Action"]
    return a if isinstance(a, list) else [a]


def test_the_stack_names_the_parameter_but_creates_no_secret_and_no_parameter(resources):
    kinds = {r["Type"] for r in resources.values()}
    assert not {"AWS::SecretsManager::Secret", "AWS::SSM::Parameter"} & kinds
    env = resources["LaunchFunction"]["Properties"]["Environment"]["Variables"]
    assert resolved(env["POOL_TOKEN_PARAMETER"]) == [TOKEN_NAME]


def test_only_the_instance_role_may_read_the_token(resources):
    readers = {
        name
        for name, st in role_statements(resources)
        if st["Effect"] == "Allow"
        and any(a in READS or a == "ssm:*" for a in actions(st))
        and any(fnmatchcase(TOKEN_ARN, arn) for arn in resolved(st["Resource"]))
    }
    denied = {
        name
        for name, st in role_statements(resources)
        if st["Effect"] == "Deny"
        and set(READS[:3]) <= set(actions(st))
        and any(fnmatchcase(TOKEN_ARN, arn) for arn in resolved(st["Resource"]))
    }
    # the launch role's image-parameter grant (parameter/annex/*) covers the token: its Deny takes it away
    assert readers - denied == {"AnnexInstanceRole"}
    (grant,) = [
        st
        for name, st in role_statements(resources)
        if name == "AnnexInstanceRole" and st["Sid"] == "ReadPoolToken"
    ]
    assert actions(grant) == ["ssm:GetParameter"]
    assert resolved(grant["Resource"]) == [TOKEN_ARN]


def test_the_launch_function_only_describes_the_parameter(resources):
    launch = [st for name, st in role_statements(resources) if name == "LaunchRole"]
    (describe,) = [st for st in launch if "ssm:DescribeParameters" in actions(st)]
    assert actions(describe) == ["ssm:DescribeParameters"]
    assert describe["Resource"] == "*"  # DescribeParameters has no resource-level permissions


def test_only_the_seed_writes_the_token_and_only_that_parameter(resources):
    writers = [(n, st) for n, st in role_statements(resources) if "ssm:PutParameter" in actions(st)]
    assert [n for n, _ in writers] == ["SeedRole"]
    assert resolved(writers[0][1]["Resource"]) == [TOKEN_ARN]
