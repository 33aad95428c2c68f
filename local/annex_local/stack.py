"""The whole control plane offline: embedded AWS, gateway, stream poller, scheduler, simulated nodes.
`LocalStack(options).start()` returns once everything is ready; `stop()` shuts it down cleanly."""

from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from annex_local.async_invoke import AsyncInvoker, async_config
from annex_local.aws import ACCOUNT, REGION, EmbeddedAws, Provisioned
from annex_local.gateway import Gateway, stage_name
from annex_local.http_api import INVOKE, IdentityPolicies, invoke_arn, researcher_statements, role_statements
from annex_local.nodes import SPOT_NOTICE_PERIOD, SimulatedNodes
from annex_local.notices import NoticeCourier
from annex_local.queues import QueuePoller, queue_mappings
from annex_local.runtime import LocalRuntime, install_code_paths, stack_environment
from annex_local.scheduler import Scheduler, schedules_from_template
from annex_local.sigv4 import Identity
from annex_local.streams import StreamMapping, StreamPoller
from annex_local.template import (
    events_of_type,
    function_environment,
    functions,
    handler_path,
    http_apis,
    load_template,
    parameter_defaults,
    resource_policy_denies,
    rest_apis,
)

log = logging.getLogger("annex_local")
gateway_log = logging.getLogger("annex_local.gateway")

USERS = {
    "alice": f"arn:aws:iam::{ACCOUNT}:user/alice",
    "bob": f"arn:aws:iam::{ACCOUNT}:user/bob",
    "admin": f"arn:aws:iam::{ACCOUNT}:user/admin",
}
# The local stack's API ids (the first label of an execute-api host when deployed).
LOCAL_API_IDS = {"AnnexApi": "local", "HeartbeatApi": "local-heartbeat"}
# Parameters for local use: the administrator is `admin`; the rest are the template's defaults unless
# --param or --fast say otherwise.
LOCAL_PARAMS = {"AdminPrincipals": USERS["admin"]}
# --fast: a lifecycle in minutes instead of hours.
FAST_PARAMS = {
    "MinLease": "1m",
    "MinExtension": "1m",
    "MinIdleTimeout": "20s",
    "DefaultIdleTimeout": "1m",
    "BootGrace": "45s",
    "HeartbeatLossGrace": "30s",
    "InstanceConfigTimeout": "30s",  # must stay below BootGrace (checked by the launch settings)
    "DrainBeforeLeaseEnd": "20s",
}
# Function variables the local stack sets itself: the sweeps work one item at a time (moto's backends are
# not thread-safe) and the orphan sweep examines the whole (small) local fleet on every run.
LOCAL_VARIABLES = {"SWEEP_WORKERS": "1", "ORPHAN_SEGMENTS": "1"}
# Scheduled functions the local stack does not run, and why.
NOT_SCHEDULED_LOCALLY = {
    "PricesFunction": "moto has no AWS Price List API; the stack loads the shipped price snapshot instead",
}
FAST_SWEEP_SECONDS = 5.0
FAST_HEARTBEAT_SECONDS = 5.0
FAST_SPOT_NOTICE = timedelta(seconds=10)  # EC2's two-minute spot warning, shortened like the rest


@dataclass
class Options:
    state_dir: Path = Path(".annex-local")
    host: str = "127.0.0.1"
    port: int = 0
    aws_port: int = 0
    stack_name: str = "annex-local"
    sweep_period: float | None = None  # None: the template's schedules
    heartbeat_period: float = 60.0  # the on-instance agent's timer
    stream_interval: float = 0.5
    params: dict[str, str] = field(default_factory=dict)
    fast: bool = False

    def effective_params(self) -> dict[str, str]:
        return {**LOCAL_PARAMS, **(FAST_PARAMS if self.fast else {}), **self.params}

    def effective_sweep_period(self) -> float | None:
        return self.sweep_period or (FAST_SWEEP_SECONDS if self.fast else None)

    def effective_heartbeat_period(self) -> float:
        return (
            FAST_HEARTBEAT_SECONDS if self.fast and self.heartbeat_period == 60.0 else self.heartbeat_period
        )


class SettingsRejected(ValueError):
    """The functions would refuse these parameters at cold start; the message names them and why."""


def _gateway_log(line: str) -> None:
    """The gateway's log sink: a handler that failed is an error, every other line is a request."""
    if " -> 502: " in line:
        gateway_log.error("%s", line)
    else:
        gateway_log.info("%s", line)


def parameter_of_variable() -> dict[str, str]:
    """Environment variable -> the template parameter it comes from (`!Ref P` or `!Join [",", !Ref P]`)."""
    declared = load_template().get("Parameters", {})
    out: dict[str, str] = {}
    for logical_id in functions():
        for var, value in function_environment(logical_id).items():
            ref = value["Fn::Join"][1] if isinstance(value, dict) and "Fn::Join" in value else value
            if isinstance(ref, dict) and ref.get("Ref") in declared:
                out[var] = str(ref["Ref"])
    return out


def describe_settings_errors(errors: Sequence[Mapping[str, Any]], values: dict[str, str]) -> list[str]:
    """pydantic's errors on a settings model, in the words of `--param`: each line names the template
    parameter (not the environment variable the function reads), its value, and the reason."""
    names = parameter_of_variable()

    def words(text: str) -> str:
        text = re.sub(r"^Value error, ", "", text)
        return re.sub(r"\b[A-Z][A-Z0-9_]+\b", lambda m: names.get(m.group(0), m.group(0)), text)

    lines = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        message = words(str(error.get("msg", "invalid")))
        if loc:
            param = names.get(loc[0], loc[0])
            lines.append(f"{param}={values.get(param, '')!s}: {message}")
        else:
            mentioned = [
                p for p in dict.fromkeys(re.findall(r"\b[A-Z][A-Za-z0-9]+\b", message)) if p in values
            ]
            given = ", ".join(f"{p}={values[p]}" for p in mentioned)
            lines.append(f"{message}" + (f" (here {given})" if given else ""))
    return lines


class LocalStack:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.aws = EmbeddedAws(host=options.host, port=options.aws_port, stack_name=options.stack_name)
        self.runtime = LocalRuntime()
        self.identities: dict[str, Any] = {}
        self.users: dict[str, tuple[str, str]] = {}
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.gateway: Gateway | None = None  # the researchers' API (AnnexApi)
        self.gateways: dict[str, Gateway] = {}  # every API of the template, by logical id
        self.provisioned: Provisioned | None = None
        self.pollers: list[StreamPoller] = []
        self.scheduler: Scheduler | None = None
        self.nodes: SimulatedNodes | None = None

    # --- start / stop -----------------------------------------------------------------------------

    def start(self) -> LocalStack:
        unknown = set(self.options.params) - set(parameter_defaults())
        if unknown:
            raise ValueError(f"unknown template parameter(s): {', '.join(sorted(unknown))}")
        self.aws.start()
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LocalStack:
        self.provisioned = prov = self.aws.provision()
        for name, arn in USERS.items():
            key = "AKIA" + secrets.token_hex(8).upper()
            secret = secrets.token_urlsafe(30)
            self.identities[key] = Identity(secret, arn)
            self.users[name] = (key, secret)
        handlers = {
            fn: self.runtime.as_gateway_handler(fn)
            for kind in ("Api", "HttpApi")
            for fn, _, _ in events_of_type(kind)
        }
        # One gateway per API, as deployed: AnnexApi on the requested port, the others (HeartbeatApi) on
        # any free one. A REST API refuses whom its resource policy denies; an HTTP API (no resource
        # policy) whom the caller's own IAM policies do not allow.
        for api in [*rest_apis(), *http_apis()]:
            authorize = (
                self._resource_policy(api, prov.refs)
                if api in rest_apis()
                else self._identity_policies(api, prov)
            )
            self.gateways[api] = Gateway(
                self.identities,
                region=REGION,
                host=self.options.host,
                port=self.options.port if api == "AnnexApi" else 0,
                api=api,
                handlers=handlers,
                authorize=authorize,
                log=_gateway_log,
            ).start()
        self.gateway = self.gateways["AnnexApi"]
        self._configure_functions(prov)
        self._load_prices(prov)
        # Every handler module is imported here, once, before any thread that invokes them starts; then
        # every function's settings are validated as at a cold start, so bad parameters stop `up`.
        self.runtime.preload()
        self.validate_settings()
        self._start_pollers(prov)
        self._start_queue_pollers(prov)
        self._start_scheduler()
        self._start_nodes(prov)
        self._start_notices(prov)
        self._start_async_invokes(prov)
        self.write_state()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for gateway in self.gateways.values():
            gateway.stop()
        self.aws.stop()
        env_file = self.options.state_dir / "env"
        if env_file.exists():
            env_file.unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- wiring -----------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    @property
    def heartbeat_url(self) -> str:
        """The template's HeartbeatUrl output: the heartbeat route on its own API."""
        return f"{self.gateways['HeartbeatApi'].url}/heartbeat"

    @staticmethod
    def _resource_policy(api: str, refs: dict[str, str]) -> Any:
        def authorize(who: Any, _method: str, _path: str) -> bool:
            return not resource_policy_denies(api, who.arn, refs)

        return authorize

    @staticmethod
    def _identity_policies(api: str, prov: Provisioned) -> Any:
        """execute-api:Invoke as IAM decides it for an HTTP API: by the caller's own policies — the
        instance role's from the template, the README's researchers' policy for alice, bob and admin."""
        refs = {
            **prov.refs,
            **LOCAL_API_IDS,
            "AWS::Partition": "aws",
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
        }
        policies = IdentityPolicies()
        policies.add(prov.refs["AnnexInstanceRole.Arn"], role_statements("AnnexInstanceRole", refs))
        for arn in USERS.values():
            policies.add(arn, researcher_statements(REGION, LOCAL_API_IDS["AnnexApi"]))
        stage = stage_name(api=api)

        def authorize(who: Any, method: str, path: str) -> bool:
            return policies.allows(
                who.arn, INVOKE, invoke_arn(REGION, LOCAL_API_IDS[api], stage, method, path)
            )

        return authorize

    def _configure_functions(self, prov: Provisioned) -> None:
        overrides = {
            **prov.refs,
            **self.options.effective_params(),
            **self.network_parameters(prov),
            **LOCAL_API_IDS,
            **LOCAL_VARIABLES,
        }
        env = stack_environment(
            table_name=prov.table_name,
            stack_name=self.options.stack_name,
            overrides={**overrides, **self.url_overrides()},
            region=REGION,
            account=ACCOUNT,
        )
        env.update(
            AWS_ENDPOINT_URL=self.aws.endpoint,
            AWS_ACCESS_KEY_ID="annex-local",
            AWS_SECRET_ACCESS_KEY="annex-local",
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            POWERTOOLS_TRACE_DISABLED="1",
            POWERTOOLS_METRICS_NAMESPACE="AnnexLocal",
        )
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(var, None)
        self.runtime.configure(env)

    def validate_settings(self) -> None:
        """Each function's settings model, read from the environment as its cold start would. A value
        the functions would refuse raises SettingsRejected naming the parameter and the reason."""
        from pydantic import ValidationError  # noqa: PLC0415 - the functions' own dependency

        values = {**parameter_defaults(), **self.options.effective_params()}
        problems: list[str] = []
        for logical_id in functions():
            module = importlib.import_module(handler_path(logical_id)[0])
            settings = getattr(module, "settings", None)
            if settings is None:
                continue
            try:
                settings()
            except ValidationError as exc:
                for line in describe_settings_errors(exc.errors(), values):
                    if line not in problems:
                        problems.append(line)
        if problems:
            raise SettingsRejected("the functions would refuse these parameters: " + "; ".join(problems))

    def network_parameters(self, prov: Provisioned) -> dict[str, str]:
        """What an administrator supplies at deploy time (subnets, security group, image, central
        manager), pointed at the embedded EC2."""
        supplied = {
            "SubnetIds": ",".join(prov.subnet_ids),
            "PoolSecurityGroupId": prov.security_group_id,
            "AnnexImageId": prov.image_id,
            "CentralManager": "cm.pool.local:9618",
        }
        declared = load_template().get("Parameters", {})
        missing = set(supplied) - set(declared)
        if missing:
            raise ValueError(
                f"template.yaml no longer declares {', '.join(sorted(missing))}; update annex_local"
            )
        return supplied

    def url_overrides(self) -> dict[str, str]:
        return {"HEARTBEAT_URL": self.heartbeat_url}

    def _thread(self, target: Any, *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _start_pollers(self, prov: Provisioned) -> None:
        streams = self.aws.client("dynamodbstreams")
        sqs = self.aws.client("sqs")
        for fn, _name, props in events_of_type("DynamoDB"):
            destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
            queue_url = None
            if isinstance(destination, dict) and "Fn::GetAtt" in destination:
                queue_url = prov.refs.get(destination["Fn::GetAtt"][0])
            mapping = StreamMapping(
                function_id=fn,
                stream_arn=prov.stream_arn,
                filters=list((props.get("FilterCriteria") or {}).get("Filters", [])),
                batch_size=int(props.get("BatchSize", 100)),
                starting_position=str(props.get("StartingPosition", "TRIM_HORIZON")),
                max_retries=int(props.get("MaximumRetryAttempts", -1)),
                on_failure_queue_url=queue_url,
                report_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
            )
            poller = StreamPoller(mapping, streams, self.runtime.invoke, sqs=sqs, region=REGION)
            self.pollers.append(poller)
            self._thread(poller.run, self.stop_event, self.options.stream_interval, name=f"stream-{fn}")

    def _start_queue_pollers(self, prov: Provisioned) -> None:
        """The template's SQS event sources (the lease timers), against the embedded SQS."""
        for mapping in queue_mappings():
            poller = QueuePoller(
                mapping,
                self.aws.client("sqs"),
                prov.refs[mapping.queue_logical_id],
                prov.refs[f"{mapping.queue_logical_id}.Arn"],
                self.runtime.invoke,
                region=REGION,
            )
            self._thread(poller.run, self.stop_event, 0.1, name=f"queue-{mapping.function_id}")

    def _load_prices(self, prov: Provisioned) -> None:
        """The shipped, dated price snapshot into the table, as the prices function would store prices."""
        install_code_paths()
        from annex.pricing.prices import load_snapshot  # noqa: PLC0415 - the layer is on the path now
        from annex.store import AnnexStore  # noqa: PLC0415

        snapshot = load_snapshot()
        if snapshot.region == REGION:
            AnnexStore(self.aws.client("dynamodb"), prov.table_name).put_prices(snapshot.prices())

    def _start_notices(self, prov: Provisioned) -> None:
        if not prov.notice_queue_url:
            return
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        courier = NoticeCourier(
            sqs=self.aws.client("sqs"),
            sns=self.aws.client("sns"),
            queue_url=prov.notice_queue_url,
            topics=prov.notice_topics,
            out=self.options.state_dir.resolve() / "notices.jsonl",
        )
        self._thread(courier.run, self.stop_event, 1.0, name="notices")

    def _start_async_invokes(self, prov: Provisioned) -> None:
        """EventBridge rules that target a function (the spot interruption rule): Lambda's asynchronous
        invocation, with its retries and on-failure destination (annex_local.async_invoke)."""
        for fn, queue_url in prov.function_targets.items():
            config = async_config(fn)
            on_failure = prov.refs.get(config.on_failure_logical_id) if config.on_failure_logical_id else None
            invoker = AsyncInvoker(
                config,
                sqs=self.aws.client("sqs"),
                queue_url=queue_url,
                invoke=self.runtime.invoke,
                function_arn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.options.stack_name}-{fn}",
                on_failure_queue_url=on_failure,
            )
            self._thread(invoker.run, self.stop_event, 0.2, name=f"async-{fn}")

    def _start_scheduler(self) -> None:
        for fn, why in NOT_SCHEDULED_LOCALLY.items():
            log.info("not scheduling %s: %s", fn, why)
        self.scheduler = Scheduler(
            [s for s in schedules_from_template() if s.function_id not in NOT_SCHEDULED_LOCALLY],
            self.runtime.invoke,
            period_override=self.options.effective_sweep_period(),
            region=REGION,
            account=ACCOUNT,
        )
        if self.scheduler.schedules:
            self._thread(self.scheduler.run, self.stop_event, name="scheduler")

    def _start_nodes(self, prov: Provisioned) -> None:
        assert self.gateway is not None
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        period = self.options.effective_heartbeat_period()
        self.nodes = SimulatedNodes(
            ec2=self.aws.client("ec2"),
            heartbeat_url=self.heartbeat_url,
            identities=self.identities,
            role_name=prov.instance_role_name,
            stack_name=self.options.stack_name,
            heartbeat_period=period,
            lock=self.runtime.lock,
            region=REGION,
            account=ACCOUNT,
            credentials_file=self.options.state_dir.resolve() / "instance-credentials",
            events=self.aws.client("events"),
            spot_notice_period=FAST_SPOT_NOTICE if self.options.fast else SPOT_NOTICE_PERIOD,
        )
        self._thread(self.nodes.run, self.stop_event, min(1.0, period), name="nodes")

    # --- the state directory ----------------------------------------------------------------------

    def write_state(self) -> None:
        d = self.options.state_dir.resolve()
        d.mkdir(parents=True, exist_ok=True)
        credentials = d / "credentials"
        config = d / "config"
        credentials.write_text(
            "".join(
                f"[{name}]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n\n"
                for name, (key, secret) in self.users.items()
            )
        )
        credentials.chmod(0o600)
        config.write_text("".join(f"[profile {name}]\nregion = {REGION}\n\n" for name in self.users))
        env = {
            "ANNEX_ENDPOINT": self.api_url,
            "ANNEX_HEARTBEAT_URL": self.heartbeat_url,
            "AWS_ENDPOINT_URL": self.aws.endpoint,
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
            "AWS_DEFAULT_REGION": REGION,
        }
        tmp = d / "env.tmp"
        tmp.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        tmp.replace(d / "env")  # appears whole: readers never see half a file
