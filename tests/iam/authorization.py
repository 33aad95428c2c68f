"""IAM by execution, part 2: what IAM authorizes for one recorded call, and whether a role grants it.

`required(record)` turns a recorded operation into the IAM requests AWS makes for it, with the rules that
are easy to get wrong:

- DynamoDB transactions are authorized per item (Put -> PutItem, Update -> UpdateItem, Delete ->
  DeleteItem, ConditionCheck -> ConditionCheckItem); a query on an index needs the index's ARN.
- RunInstances is authorized on every resource it touches (instance, volume, network interface, subnet,
  security group, image), tags at launch need ec2:CreateTags with ec2:CreateAction, and an instance
  profile needs iam:PassRole on its role (iam:PassedToService ec2).
- EC2 Fleet (instant) launches with the caller's permissions: ec2:CreateFleet and ec2:RunInstances on the
  fleet, template, subnets, instances and volumes, ec2:CreateTags for the fleet's and the instances'
  tags, and iam:PassRole for the template's instance profile.

`grants(statements, request)` evaluates a role's Allow statements: actions (wildcards), resources (ARN
patterns resolved for the test run), and conditions on request keys (StringEquals, ForAllValues,
ArnEquals). Keys that describe an existing resource (aws:ResourceTag/*, ec2:InstanceProfile) cannot be
known from the request: they are taken as met and listed as not evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"
PSEUDO = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}
RESOURCE_STATE_KEYS = ("aws:ResourceTag/", "ec2:InstanceProfile")
_TRANSACT = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
}
_EC2_PREFIX = {
    "i-": "instance",
    "vol-": "volume",
    "lt-": "launch-template",
    "fleet-": "fleet",
    "eni-": "network-interface",
}


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def value(self, key: str) -> tuple[str, ...] | None:
        return next((v for k, v in self.context if k == key), None)


@dataclass
class Decision:
    allowed: bool
    statement: str | None = None
    not_evaluated: set[str] = field(default_factory=set)


def _ctx(**values: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for key, value in values.items():
        if value is None:
            continue
        out.append(
            (
                key.replace("__", ":").replace("_SLASH_", "/"),
                tuple(value) if isinstance(value, list | tuple) else (str(value),),
            )
        )
    return tuple(out)


def ec2_arn(kind: str, name: str = "*") -> str:
    if kind == "image":
        return f"arn:aws:ec2:{REGION}::image/{name}"
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{name}"


def _tags(specs: list[dict[str, Any]], kind: str) -> list[dict[str, str]]:
    return [t for s in specs or [] if s.get("ResourceType") == kind for t in s.get("Tags", [])]


def _tag_context(tags: list[dict[str, str]]) -> list[tuple[str, tuple[str, ...]]]:
    ctx = [(f"aws:RequestTag/{t['Key']}", (t["Value"],)) for t in tags]
    if tags:
        ctx.append(("aws:TagKeys", tuple(t["Key"] for t in tags)))
    return ctx


def _tagging_at_creation(specs: list[dict[str, Any]], action: str) -> list[Request]:
    out = []
    for spec in specs or []:
        tags = spec.get("Tags", [])
        ctx = (("ec2:CreateAction", (action,)), *_tag_context(tags))
        out.append(Request("ec2:CreateTags", ec2_arn(spec["ResourceType"]), tuple(ctx)))
    return out


def _pass_role(profile: dict[str, Any] | None) -> list[Request]:
    if not profile:
        return []
    # The role inside the stack's instance profile (the template's AnnexInstanceRole).
    return [
        Request(
            "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/*", _ctx(iam__PassedToService="ec2.amazonaws.com")
        )
    ]


def _launch(
    action: str,
    *,
    specs: list[dict[str, Any]],
    instance_type: str | None,
    tokens: str | None,
    subnets: list[str],
    groups: list[str],
    image: str | None,
    template: str | None,
) -> list[Request]:
    """The RunInstances-shaped authorization of one launch (RunInstances itself, or EC2 Fleet's)."""
    instance_ctx = (
        *_tag_context(_tags(specs, "instance")),
        *_ctx(ec2__InstanceType=instance_type, ec2__MetadataHttpTokens=tokens),
    )
    reqs = [
        Request(action, ec2_arn("instance"), tuple(instance_ctx)),
        Request(action, ec2_arn("volume"), tuple(_tag_context(_tags(specs, "volume")))),
        Request(action, ec2_arn("network-interface")),
        Request(action, ec2_arn("image", image or "*")),
    ]
    reqs += [Request(action, f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/{s}") for s in subnets]
    reqs += [Request(action, ec2_arn("security-group", g)) for g in groups]
    if template:
        reqs.append(Request(action, ec2_arn("launch-template", template)))
    return reqs


def required(record: dict[str, Any], templates: dict[str, dict[str, Any]]) -> list[Request]:
    """The IAM requests behind one recorded call. `templates` maps launch template names to the
    LaunchTemplateData the code created them with (EC2 Fleet launches from them)."""
    service, op, p = record["service"], record["operation"], record["params"]
    table = lambda name: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"  # noqa: E731
    if service == "dynamodb":
        if op == "TransactWriteItems":
            return [
                Request(f"dynamodb:{_TRANSACT[kind]}", table(body["TableName"]))
                for item in p["TransactItems"]
                for kind, body in item.items()
            ]
        if op == "TransactGetItems":
            return [Request("dynamodb:GetItem", table(i["Get"]["TableName"])) for i in p["TransactItems"]]
        if op in ("BatchGetItem", "BatchWriteItem"):
            return [Request(f"dynamodb:{op}", table(name)) for name in p["RequestItems"]]
        arn = table(p["TableName"])
        if p.get("IndexName"):
            arn += f"/index/{p['IndexName']}"
        return [Request(f"dynamodb:{op}", arn)]
    if service == "ec2":
        if op.startswith("Describe"):
            return [Request(f"ec2:{op}", "*")]
        if op == "TerminateInstances":
            return [Request("ec2:TerminateInstances", ec2_arn("instance", i)) for i in p["InstanceIds"]]
        if op == "CreateTags":
            ctx = tuple(_tag_context(p["Tags"]))
            kinds = {
                next((k for pre, k in _EC2_PREFIX.items() if r.startswith(pre)), "unknown")
                for r in p["Resources"]
            }
            return [Request("ec2:CreateTags", ec2_arn(kind), ctx) for kind in sorted(kinds)]
        if op == "RunInstances":
            specs = p.get("TagSpecifications", [])
            tokens = (p.get("MetadataOptions") or {}).get("HttpTokens", "optional")
            return [
                *_launch(
                    "ec2:RunInstances",
                    specs=specs,
                    instance_type=p.get("InstanceType"),
                    tokens=tokens,
                    subnets=[p["SubnetId"]] if p.get("SubnetId") else [],
                    groups=p.get("SecurityGroupIds", []),
                    image=p.get("ImageId"),
                    template=None,
                ),
                *_tagging_at_creation(specs, "RunInstances"),
                *_pass_role(p.get("IamInstanceProfile")),
            ]
        if op == "CreateLaunchTemplate":
            specs = p.get("TagSpecifications", [])
            ctx = tuple(_tag_context(_tags(specs, "launch-template")))
            return [
                Request("ec2:CreateLaunchTemplate", ec2_arn("launch-template"), ctx),
                *_tagging_at_creation(specs, "CreateLaunchTemplate"),
            ]
        if op == "DeleteLaunchTemplate":
            return [Request("ec2:DeleteLaunchTemplate", ec2_arn("launch-template"))]
        if op == "CreateFleet":
            specs = p.get("TagSpecifications", [])
            out = [Request("ec2:CreateFleet", ec2_arn("fleet"), tuple(_tag_context(_tags(specs, "fleet"))))]
            out += _tagging_at_creation(specs, "CreateFleet")
            for config in p["LaunchTemplateConfigs"]:
                name = config["LaunchTemplateSpecification"].get("LaunchTemplateName", "*")
                data = templates.get(name, {})
                inner = data.get("TagSpecifications", [])
                for override in config.get("Overrides", [{}]):
                    for action in ("ec2:CreateFleet", "ec2:RunInstances"):
                        out += _launch(
                            action,
                            specs=inner,
                            instance_type=override.get("InstanceType"),
                            tokens=(data.get("MetadataOptions") or {}).get("HttpTokens", "optional"),
                            subnets=[override["SubnetId"]] if override.get("SubnetId") else [],
                            groups=data.get("SecurityGroupIds", []),
                            image=data.get("ImageId"),
                            template="*",
                        )
                out += _tagging_at_creation(inner, "RunInstances")
                out += _pass_role(data.get("IamInstanceProfile"))
            return out
    if service == "ssm":
        if op == "DescribeParameters":
            # No resource-level permissions: IAM authorizes it on "*" (it returns metadata, never values).
            return [Request("ssm:DescribeParameters", "*")]
        names = p.get("Names", []) or ([p["Name"]] if "Name" in p else [])
        # A name that starts with "/" is the ARN's path as is; one without gets a "/".
        return [
            Request(f"ssm:{op}", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{str(n).lstrip('/')}")
            for n in names
        ]
    if service == "sqs":
        queue = str(p["QueueUrl"]).rstrip("/").rsplit("/", 1)[1]
        # Batch actions are authorized by their single-message action (SendMessageBatch by SendMessage).
        return [Request(f"sqs:{op.removesuffix('Batch')}", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}")]
    if service == "cloudwatch":
        return [Request(f"cloudwatch:{op}", "*")]
    if service == "events" and op == "PutEvents":
        # Authorized per entry, on the bus it names (a name or an ARN; none is the default bus).
        buses = {str(e.get("EventBusName") or "default") for e in p["Entries"]}
        return [
            Request(
                "events:PutEvents",
                b if b.startswith("arn:") else f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/{b}",
            )
            for b in sorted(buses)
        ]
    if service == "sns" and op in ("Subscribe", "Publish"):
        return [Request(f"sns:{op}", str(p["TopicArn"]))]
    if service == "pricing":
        return [Request(f"pricing:{op}", "*")]  # the Price List API has no resource-level permissions
    raise ValueError(f"no authorization rule for {service}:{op}; add one to tests/iam/authorization.py")


# --- the template side --------------------------------------------------------------------------------


def resolve(value: Any, env: dict[str, str], params: dict[str, Any]) -> list[str]:
    """A template value as ARN patterns for this test run. Parameters an administrator sets (image,
    subnets, security group) become wildcards; the table and stack are the run's own."""

    def ref(name: str) -> str:
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "AWS::StackName":
            return env.get("STACK_NAME", "*")
        if name in params:
            return "*"
        if name == "AnnexTable.Arn":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{env.get('TABLE_NAME', '*')}"
        if name == "AnnexInstanceRole.Arn":
            return f"arn:aws:iam::{ACCOUNT}:role/*"
        return "*"

    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [r for v in value for r in resolve(v, env, params)]
    if "Ref" in value:
        return [] if value["Ref"] == "AWS::NoValue" else [ref(value["Ref"])]
    if "Fn::GetAtt" in value:
        return [ref(".".join(value["Fn::GetAtt"]))]
    if "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        text, local = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
        names = dict.fromkeys(local, "*")
        return [re.sub(r"\$\{([\w:.]+)\}", lambda m: names.get(m.group(1)) or ref(m.group(1)), text)]
    if "Fn::If" in value:  # both branches: the role is checked as deployed with the parameters set
        _, yes, no = value["Fn::If"]
        return resolve(yes, env, params) + resolve(no, env, params)
    if "Fn::Split" in value:
        return resolve(value["Fn::Split"][1], env, params)
    raise ValueError(f"cannot resolve {value!r}")


def _condition_values(raw: Any, env: dict[str, str], params: dict[str, Any]) -> list[str]:
    if isinstance(raw, dict) and "Ref" in raw and raw["Ref"] in params:
        default = params[raw["Ref"]].get("Default", "")
        return [v.strip() for v in str(default).split(",")]
    return resolve(raw, env, params)


def _conditions_met(
    condition: dict[str, Any],
    request: Request,
    env: dict[str, str],
    params: dict[str, Any],
    skipped: set[str],
) -> bool:
    for operator, keys in condition.items():
        for key, raw in keys.items():
            if key.startswith(RESOURCE_STATE_KEYS):
                skipped.add(key)
                continue
            allowed = _condition_values(raw, env, params)
            actual = request.value(key)
            if operator.startswith("ForAllValues:"):
                if actual is not None and not all(any(fnmatchcase(a, x) for x in allowed) for a in actual):
                    return False
                continue
            if actual is None:  # a key the request does not carry: the condition does not match
                return False
            if operator in ("StringEquals", "ArnEquals", "ArnLike", "StringLike"):
                if not any(
                    fnmatchcase(a, x) if "Like" in operator else a == x for a in actual for x in allowed
                ):
                    return False
            else:
                raise ValueError(f"condition operator {operator} is not evaluated here; add it")
    return True


def grants(
    statements: list[dict[str, Any]], request: Request, env: dict[str, str], params: dict[str, Any]
) -> Decision:
    skipped: set[str] = set()
    for st in statements:
        if st.get("Effect") != "Allow":
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if not any(fnmatchcase(request.action.lower(), a.lower()) for a in actions):
            continue
        if not any(fnmatchcase(request.resource, r) for r in resolve(st["Resource"], env, params)):
            continue
        if _conditions_met(st.get("Condition", {}), request, env, params, skipped):
            return Decision(True, st.get("Sid"), skipped)
    return Decision(False, None, skipped)
