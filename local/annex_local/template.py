"""Read template.yaml: the single source of truth for the table, routes and schedules used by the tests
and the local stack."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"
# Pseudo parameters as the local stack and the tests see them (moto's defaults).
PSEUDO_PARAMETERS = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}
_SUB_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:.]+)\}")


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps CloudFormation short-form tags (!Ref, !Sub, ...) as {'Fn::X': value}."""


def _tag(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


@cache
def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    with path.open() as fh:
        loaded: dict[str, Any] = yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
        return loaded


def resources(type_: str, path: Path = TEMPLATE) -> dict[str, dict[str, Any]]:
    """The resources of a type that a deploy with the parameter defaults creates (a resource whose
    Condition is false there, such as the optional seed node's, does not exist locally)."""
    return {
        k: v
        for k, v in load_template(path)["Resources"].items()
        if v.get("Type") == type_ and ("Condition" not in v or condition_holds(v["Condition"], path=path))
    }


def condition_holds(name: str, params: dict[str, str] | None = None, path: Path = TEMPLATE) -> bool:
    """A template Condition over parameter values (the defaults, then `params`)."""
    values = {**parameter_defaults(path), **(params or {})}
    conditions = load_template(path).get("Conditions", {})

    def value(v: Any) -> str:
        if isinstance(v, dict) and "Ref" in v:
            return values[v["Ref"]]
        return str(v)

    def holds(c: Any) -> bool:
        if "Condition" in c or "Fn::Condition" in c:  # the loader reads the short form as Fn::Condition
            return holds(conditions[c.get("Condition") or c["Fn::Condition"]])
        if "Fn::Equals" in c:
            left, right = c["Fn::Equals"]
            return value(left) == value(right)
        if "Fn::Not" in c:
            return not holds(c["Fn::Not"][0])
        if "Fn::And" in c:
            return all(holds(x) for x in c["Fn::And"])
        if "Fn::Or" in c:
            return any(holds(x) for x in c["Fn::Or"])
        raise KeyError(f"cannot evaluate condition {c!r} locally")

    return holds(conditions[name])


def parameter_defaults(path: Path = TEMPLATE) -> dict[str, str]:
    out = {}
    for name, spec in load_template(path).get("Parameters", {}).items():
        out[name] = str(spec.get("Default", ""))
    return out


def table_create_kwargs(
    table_name: str, logical_id: str = "AnnexTable", path: Path = TEMPLATE
) -> dict[str, Any]:
    """CreateTable arguments from the template's own table definition."""
    props = load_template(path)["Resources"][logical_id]["Properties"]
    kwargs: dict[str, Any] = {
        "TableName": table_name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if props.get("StreamSpecification"):
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    return kwargs


def ttl_attribute(logical_id: str = "AnnexTable", path: Path = TEMPLATE) -> str | None:
    spec = load_template(path)["Resources"][logical_id]["Properties"].get("TimeToLiveSpecification")
    return spec["AttributeName"] if spec and spec.get("Enabled") else None


def functions(path: Path = TEMPLATE) -> dict[str, dict[str, Any]]:
    return resources("AWS::Serverless::Function", path)


def events_of_type(type_: str, path: Path = TEMPLATE) -> list[tuple[str, str, dict[str, Any]]]:
    """(function logical id, event name, event properties) for every event of that type."""
    out = []
    for fn, spec in functions(path).items():
        for name, event in (spec.get("Properties", {}).get("Events") or {}).items():
            if event.get("Type") == type_:
                out.append((fn, name, event.get("Properties", {})))
    return out


def handler_path(logical_id: str, path: Path = TEMPLATE) -> tuple[str, str]:
    """(module, attribute) of a function's handler: CodeUri functions/request/ + app.handler ->
    ('functions.request.app', 'handler')."""
    props = load_template(path)["Resources"][logical_id]["Properties"]
    code = str(props["CodeUri"]).strip("/").replace("/", ".")
    module, attribute = str(props["Handler"]).rsplit(".", 1)
    return f"{code}.{module}", attribute


def function_environment(logical_id: str, path: Path = TEMPLATE) -> dict[str, Any]:
    """A function's environment with Globals merged in (values still unresolved intrinsics)."""
    tpl = load_template(path)
    env = dict(tpl.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}))
    env.update(tpl["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {}))
    return env


def resolve_environment(
    logical_id: str,
    *,
    table_name: str,
    stack_name: str,
    overrides: dict[str, str] | None = None,
    path: Path = TEMPLATE,
    region: str = "us-east-1",
    account: str = "123456789012",
) -> dict[str, str]:
    """Resolve a function's environment against the template's parameter defaults: !Ref Param, !Join of a
    list parameter, !Ref AnnexTable, AWS::StackName and the other pseudo parameters, !Sub over those.
    Other resources (and their attributes, as "Resource.Attr") come from `overrides`, which may also
    replace a variable outright."""
    params = parameter_defaults(path)
    overrides = overrides or {}
    resolved: dict[str, str] = {}

    def ref(name: str) -> str:
        if name == "AWS::StackName":
            return stack_name
        if name in overrides:
            return overrides[name]
        pseudo = {**PSEUDO_PARAMETERS, "AWS::Region": region, "AWS::AccountId": account}
        if name in pseudo:
            return pseudo[name]
        if name in params:
            return params[name]
        if name == "AnnexTable":
            return table_name
        raise KeyError(f"cannot resolve !Ref {name} locally; pass it in overrides")

    def value(v: Any) -> str:
        if isinstance(v, str | int | float):
            return str(v)
        if isinstance(v, dict) and "Ref" in v:
            return ref(str(v["Ref"]))
        if isinstance(v, dict) and "Fn::Join" in v:
            sep, parts = v["Fn::Join"]
            if isinstance(parts, dict):
                return value(parts)
            return str(sep).join(value(p) for p in parts)
        if isinstance(v, dict) and "Fn::GetAtt" in v:
            key = ".".join(v["Fn::GetAtt"])
            if key in overrides:
                return str(overrides[key])
        if isinstance(v, dict) and isinstance(v.get("Fn::Sub"), str):
            return _SUB_VARIABLE.sub(lambda m: ref(m.group(1)), v["Fn::Sub"])
        if isinstance(v, dict) and "Fn::If" in v:
            name, when_true, when_false = v["Fn::If"]
            return value(when_true if condition_holds(name, overrides, path) else when_false)
        raise KeyError(f"cannot resolve {v!r} locally; pass it in overrides")

    for key, raw in function_environment(logical_id, path).items():
        resolved[key] = overrides[key] if key in overrides else value(raw)
    return resolved


def rest_apis(path: Path = TEMPLATE) -> list[str]:
    """The logical ids of the template's REST APIs (each served by its own local gateway)."""
    return list(resources("AWS::Serverless::Api", path))


def http_apis(path: Path = TEMPLATE) -> list[str]:
    """The logical ids of the template's HTTP APIs (each served by its own local gateway)."""
    return list(resources("AWS::Serverless::HttpApi", path))


def principal_arn(caller_arn: str) -> str:
    """`aws:PrincipalArn` as IAM sets it: a role session's is its role's ARN, anything else its own."""
    match = re.match(r"^arn:([\w-]+):sts::(\d{12}):assumed-role/([^/]+)/.+$", caller_arn)
    return f"arn:{match.group(1)}:iam::{match.group(2)}:role/{match.group(3)}" if match else caller_arn


def resource_policy_denies(api: str, caller_arn: str, refs: dict[str, str], path: Path = TEMPLATE) -> bool:
    """Whether the API's resource policy (SAM `Auth.ResourcePolicy.CustomStatements`) denies
    execute-api:Invoke to this caller. Deny statements on the whole API with an ArnEquals/ArnNotEquals
    condition on aws:PrincipalArn are evaluated; `refs` resolves `!GetAtt X.Arn` ("X.Arn" -> ARN). Any
    other statement shape raises, so the template cannot grow a policy the local stack silently ignores."""
    auth = load_template(path)["Resources"][api]["Properties"].get("Auth", {})
    statements = (auth.get("ResourcePolicy") or {}).get("CustomStatements") or []
    who = principal_arn(caller_arn)
    for st in statements:
        if st.get("Effect") != "Deny" or st.get("Action") != "execute-api:Invoke":
            raise ValueError(f"{api}: the local gateway evaluates only Deny execute-api:Invoke statements")
        (operator, keys), *rest = (st.get("Condition") or {}).items()
        if rest or operator not in ("ArnEquals", "ArnNotEquals") or list(keys) != ["aws:PrincipalArn"]:
            raise ValueError(f"{api}: the local gateway evaluates only an aws:PrincipalArn condition")
        raw = keys["aws:PrincipalArn"]
        values = raw if isinstance(raw, list) else [raw]
        arns = {refs[".".join(v["Fn::GetAtt"])] if isinstance(v, dict) else str(v) for v in values}
        if (who in arns) == (operator == "ArnEquals"):
            return True
    return False
