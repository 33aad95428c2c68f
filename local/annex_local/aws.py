"""The embedded AWS: moto in server mode on 127.0.0.1, with the resources template.yaml declares created
from the template itself (table, indexes, stream, TTL, instance role and profile, queues,
topic), plus the network an administrator would supply (default VPC subnets, a security group, an AMI)."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import urllib.request
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config

from annex_local import moto_dynamodb, moto_ec2
from annex_local.template import (
    load_template,
    parameter_defaults,
    resources,
    table_create_kwargs,
    ttl_attribute,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
# Per the moto docs, DynamoDB streams through the server need account-based endpoints off.
CLIENT_CONFIG = Config(account_id_endpoint_mode="disabled", retries={"mode": "standard", "max_attempts": 3})


@dataclass
class Provisioned:
    """Physical names of what was created, keyed like template references (`LogicalId`,
    `LogicalId.Attr`) so they can resolve function environments."""

    refs: dict[str, str] = field(default_factory=dict)
    table_name: str = ""
    stream_arn: str = ""
    instance_role_name: str = ""
    subnet_ids: list[str] = field(default_factory=list)
    security_group_id: str = ""
    image_id: str = ""
    # EventBridge rules whose targets are SNS topics (moto does not deliver to SNS): each also gets a
    # local SQS queue, which the notice courier drains and delivers as SNS would (annex_local.notices).
    notice_queue_url: str = ""
    notice_topics: list[str] = field(default_factory=list)
    # EventBridge rules whose targets are this stack's functions (moto does not invoke Lambda): function
    # logical id -> a local SQS queue the rule delivers to, from which annex_local.async_invoke invokes
    # the function as Lambda's asynchronous invocation would.
    function_targets: dict[str, str] = field(default_factory=dict)


class EmbeddedAws:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, stack_name: str = "annex-local") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the embedded AWS listens on the loopback interface only")
        self.host = host
        self.port = port
        self.stack_name = stack_name
        self._server: Any = None

    def start(self) -> EmbeddedAws:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        moto_ec2.install()  # EC2's iam-instance-profile.arn filter (the inventory uses it)
        moto_dynamodb.install()  # transactions without a copy of the whole table (seconds each, locally)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self._server._server.app = OneRequestAtATime(self._server._server.app)
        self.port = self._server.get_host_and_port()[1]
        # moto's backends live in this process: a second stack here would see the first one's resources.
        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")  # noqa: S310
        with urllib.request.urlopen(reset, timeout=10):  # noqa: S310 - the embedded AWS on loopback
            pass
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, service: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id="annex-local", aws_secret_access_key="annex-local", region_name=REGION
        ).client(service, endpoint_url=self.endpoint, config=CLIENT_CONFIG)  # type: ignore[call-overload]

    @cached_property
    def template(self) -> dict[str, Any]:
        return load_template()

    def provision(self) -> Provisioned:
        out = Provisioned()
        self._table(out)
        self._pool_token(out)
        self._instance_role(out)
        self._queues_and_topics(out)
        self._events(out)
        self._network(out)
        return out

    def _name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    def _sub(self, value: Any, default: str) -> str:
        """A name the template gives (`!Sub "${AWS::StackName}-events"`), or `default`."""
        if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
            value = value["Fn::Sub"]
        if isinstance(value, str):
            return value.replace("${AWS::StackName}", self.stack_name).replace("${AWS::Region}", REGION)
        return default

    def _table(self, out: Provisioned) -> None:
        ddb = self.client("dynamodb")
        for logical_id in resources("AWS::DynamoDB::Table"):
            name = self._name(logical_id)
            desc = ddb.create_table(**table_create_kwargs(name, logical_id))["TableDescription"]
            if ttl := ttl_attribute(logical_id):
                ddb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl}
                )
            out.refs[logical_id] = name
            out.refs[f"{logical_id}.Arn"] = desc["TableArn"]
            if "LatestStreamArn" in desc:
                out.refs[f"{logical_id}.StreamArn"] = desc["LatestStreamArn"]
            out.table_name, out.stream_arn = name, desc.get("LatestStreamArn", "")

    def _pool_token(self, out: Provisioned) -> None:
        """The pool token parameter, as the administrator puts it after deploying (the stack names it in
        the launch function's POOL_TOKEN_PARAMETER and never creates it)."""
        launch = load_template()["Resources"]["LaunchFunction"]["Properties"]["Environment"]["Variables"]
        name = re.sub(
            r"\$\{([^}]+)\}",
            lambda m: self.stack_name if m.group(1) == "AWS::StackName" else parameter_defaults()[m.group(1)],
            launch["POOL_TOKEN_PARAMETER"]["Fn::Sub"],
        )
        self.client("ssm").put_parameter(
            Name=name, Value="local-pool-token-not-a-real-secret", Type="SecureString", Tier="Standard"
        )

    def _instance_role(self, out: Provisioned) -> None:
        iam = self.client("iam")
        for logical_id, spec in resources("AWS::IAM::Role").items():
            props = spec["Properties"]
            name = self._name(logical_id)
            role = iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(_plain_policy(props["AssumeRolePolicyDocument"])),
            )["Role"]
            out.refs[logical_id] = name
            out.refs[f"{logical_id}.Arn"] = role["Arn"]
            out.instance_role_name = name
        for logical_id, spec in resources("AWS::IAM::InstanceProfile").items():
            name = self._name(logical_id)
            profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
            for role_ref in spec["Properties"].get("Roles", []):
                iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=out.refs[role_ref["Ref"]])
            out.refs[logical_id] = name
            out.refs[f"{logical_id}.Arn"] = profile["Arn"]

    def _queues_and_topics(self, out: Provisioned) -> None:
        sqs = self.client("sqs")
        for logical_id in resources("AWS::SQS::Queue"):
            url = sqs.create_queue(QueueName=self._name(logical_id))["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            out.refs[logical_id] = url
            out.refs[f"{logical_id}.Arn"] = arn
            out.refs[f"{logical_id}.QueueName"] = self._name(logical_id)
        sns = self.client("sns")
        for logical_id, spec in resources("AWS::SNS::Topic").items():
            name = self._sub(spec.get("Properties", {}).get("TopicName"), self._name(logical_id))
            out.refs[logical_id] = sns.create_topic(Name=name)["TopicArn"]

    def _events(self, out: Provisioned) -> None:
        events = self.client("events")
        for logical_id, spec in resources("AWS::Events::EventBus").items():
            name = self._sub(spec.get("Properties", {}).get("Name"), self._name(logical_id))
            out.refs[f"{logical_id}.Arn"] = events.create_event_bus(Name=name)["EventBusArn"]
            out.refs[logical_id] = name
        sqs = self.client("sqs")
        for logical_id, spec in resources("AWS::Events::Rule").items():
            props = spec["Properties"]
            # A rule without EventBusName is on the account's default bus (the spot interruption rule).
            bus = out.refs[props["EventBusName"]["Ref"]] if "EventBusName" in props else "default"
            name = self._name(logical_id)
            events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps(props["EventPattern"]))
            # Targets that are this stack's queues (`!GetAtt Queue.Arn`): the events put on the bus reach
            # the queue as EventBridge delivers them (moto matches the rule's pattern, $or included).
            queues = [
                {"Id": t["Id"], "Arn": out.refs[f"{t['Arn']['Fn::GetAtt'][0]}.Arn"]}
                for t in props.get("Targets", [])
                if "Fn::GetAtt" in t.get("Arn", {}) and f"{t['Arn']['Fn::GetAtt'][0]}.QueueName" in out.refs
            ]
            # Targets that are this stack's functions (`!GetAtt Function.Arn`, the spot interruption
            # rule): a local delivery queue each, drained by annex_local.async_invoke.
            for target in props.get("Targets", []):
                fn = (target.get("Arn", {}).get("Fn::GetAtt") or [None])[0]
                if fn not in resources("AWS::Serverless::Function"):
                    continue
                url = sqs.create_queue(QueueName=f"{name}-{fn}-local-invoke")["QueueUrl"]
                arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                    "QueueArn"
                ]
                queues.append({"Id": target["Id"], "Arn": arn})
                out.function_targets[fn] = url
            if queues:
                events.put_targets(Rule=name, EventBusName=bus, Targets=queues)
            topics = [
                out.refs[t["Arn"]["Ref"]] for t in props.get("Targets", []) if "Ref" in t.get("Arn", {})
            ]
            if not topics:
                continue
            url = sqs.create_queue(QueueName=f"{name}-local-delivery")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "local-delivery", "Arn": arn}])
            out.notice_queue_url = url
            out.notice_topics = topics

    def _network(self, out: Provisioned) -> None:
        ec2 = self.client("ec2")
        subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
        out.subnet_ids = [s["SubnetId"] for s in sorted(subnets, key=lambda s: s["AvailabilityZone"])][:3]
        vpc_id = subnets[0]["VpcId"]
        out.security_group_id = ec2.create_security_group(
            GroupName=f"{self.stack_name}-pool", Description="HTCondor pool (local)", VpcId=vpc_id
        )["GroupId"]
        images = ec2.describe_images(Owners=["amazon"])["Images"]
        out.image_id = sorted(images, key=lambda i: i["ImageId"])[0]["ImageId"]


class OneRequestAtATime:
    """The embedded AWS answers one request at a time: moto's backends are not thread-safe, while the
    functions run concurrently (annex_local.runtime) as they do on Lambda. Each AWS call stays atomic, as
    on AWS. An SQS receive that waits (a long poll) is the exception: it must not stop every other call,
    and moto's queues guard their messages for it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage" and _waits(environ):
            return self.app(environ, start_response)
        with self.lock:
            body = self.app(environ, start_response)
            try:
                return [b"".join(body)]
            finally:
                if hasattr(body, "close"):
                    body.close()


def _waits(environ: dict[str, Any]) -> bool:
    """Whether a ReceiveMessage request (JSON protocol) asks to wait; the body is put back for moto."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        return int(json.loads(body or b"{}").get("WaitTimeSeconds") or 0) > 0
    except (ValueError, AttributeError):
        return False


def _plain_policy(doc: Any) -> Any:
    """Resolve the few intrinsics a trust policy uses (!Sub ec2.${AWS::URLSuffix})."""
    if isinstance(doc, dict):
        if "Fn::Sub" in doc and isinstance(doc["Fn::Sub"], str):
            return doc["Fn::Sub"].replace("${AWS::URLSuffix}", "amazonaws.com")
        return {k: _plain_policy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_plain_policy(v) for v in doc]
    return doc
