"""Extend amplification (issue 11, item 7): what 200 one-second extends cost now (history events, EC2 and
DynamoDB calls), what one MinExtension step and its client-token retry cost, and how many history items
GET /annexes/{id} reads for an annex with a long history. In process against moto. Prints figures."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "annex"), str(ROOT), str(ROOT / "local")]

TABLE, STACK = "bench-annex", "bench"


def main() -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_TRACE_DISABLED="1",
        POWERTOOLS_METRICS_NAMESPACE="AnnexBench",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    import contextlib
    import io
    import json

    import boto3
    from annex.aws import clients
    from annex_local import moto_ec2
    from annex_local.events import FakeContext, rest_event
    from annex_local.template import resolve_environment, table_create_kwargs
    from moto import mock_aws

    moto_ec2.install()  # EC2's iam-instance-profile.arn filter, which the inventory uses
    with mock_aws():
        boto3.client("dynamodb").create_table(**table_create_kwargs(TABLE))
        profile = boto3.client("iam").create_instance_profile(InstanceProfileName="annex-bench")
        profile_arn = profile["InstanceProfile"]["Arn"]
        env = resolve_environment(
            "RequestFunction",
            table_name=TABLE,
            stack_name=STACK,
            overrides={"LeaseTimerQueue": "", "AnnexInstanceProfile.Arn": profile_arn},
        )
        os.environ.update(env)
        import functions.request.app as app

        ec2_calls: Counter[str] = Counter()
        ddb_calls: Counter[str] = Counter()
        items_read: list[int] = []
        clients.ec2().meta.events.register(
            "before-call.ec2", lambda model, **_: ec2_calls.update([model.name])
        )
        ddb = clients.dynamodb()
        ddb.meta.events.register("before-call.dynamodb", lambda model, **_: ddb_calls.update([model.name]))
        ddb.meta.events.register(
            "after-call.dynamodb.Query", lambda parsed, **_: items_read.append(int(parsed.get("Count", 0)))
        )

        def call(method: str, path: str, body=None, query=None) -> tuple[int, dict]:
            event = rest_event(
                method, path, caller_arn="arn:aws:iam::123456789012:user/alice", body=body, query=query
            )
            with contextlib.redirect_stdout(io.StringIO()):  # the functions' metric lines
                resp = app.handler(event, FakeContext("request"))
            return resp["statusCode"], json.loads(resp["body"])

        def events(annex_id: str) -> int:
            status, detail = call("GET", f"/annexes/{annex_id}", query={"history_limit": "100"})
            assert status == 200, detail
            n, token = len(detail["history"]), detail.get("history_next_token")
            while token:
                _, page = call(
                    "GET", f"/annexes/{annex_id}", query={"history_limit": "100", "history_next_token": token}
                )
                n, token = n + len(page["history"]), page.get("history_next_token")
            return n

        status, annex = call("POST", "/annexes", body={"name": "amp", "count": 2, "lease": "4h"})
        assert status == 201, annex
        ec2 = boto3.client("ec2")
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        tags = [
            {"Key": "annex:id", "Value": annex["id"]},
            {"Key": "annex:stack", "Value": STACK},
            {"Key": "annex:lease-expires", "Value": annex["lease_expires_at"]},
        ]
        ec2.run_instances(
            IamInstanceProfile={"Arn": profile_arn},  # as the launch function starts them
            ImageId=image,
            MinCount=2,
            MaxCount=2,
            InstanceType="c7i.xlarge",
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
        path = f"/annexes/{annex['id']}/extend"

        before = events(annex["id"])
        ec2_calls.clear()
        ddb_calls.clear()
        answers = Counter(call("POST", path, body={"by": "1s"})[0] for _ in range(200))
        refused_ddb, refused_ec2 = dict(ddb_calls), sum(ec2_calls.values())
        codes = {int(k): v for k, v in answers.items()}
        print(
            f"200 one-second extends: answers {codes}, history events added "
            f"{events(annex['id']) - before}, EC2 calls {refused_ec2}, "
            f"DynamoDB calls {sum(refused_ddb.values())} ({refused_ddb})"
        )

        before = events(annex["id"])
        ec2_calls.clear()
        status, _ = call("POST", path, body={"by": "5m", "client_token": "bench-1"})
        one = dict(ec2_calls)
        ec2_calls.clear()
        retry_status, _ = call("POST", path, body={"by": "5m", "client_token": "bench-1"})
        print(
            f"one 5m extension (MinExtension): {status}, events +1 expected -> +{events(annex['id']) - before}, "
            f"EC2 calls {one}; its retry with the same client_token: {retry_status}, EC2 calls {dict(ec2_calls)}, "
            f"events now +{events(annex['id']) - before}"
        )

        for _ in range(200):
            assert call("POST", path, body={"by": "5m"})[0] == 200
        total = events(annex["id"])
        items_read.clear()
        status, detail = call("GET", f"/annexes/{annex['id']}")
        print(
            f"GET /annexes/{{id}} with {total} history events: {len(detail['history'])} returned, "
            f"{sum(items_read)} items read by {len(items_read)} queries, more: {bool(detail['history_next_token'])}"
        )


if __name__ == "__main__":
    main()
