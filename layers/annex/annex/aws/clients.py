"""Cached AWS clients. Nothing is created at import time, so tests import handlers without AWS around.
`AWS_ENDPOINT_URL` (honoured by botocore) points every client at the local stack.

Clients come from a botocore session, not boto3: a boto3 session adds nothing to a client (its extras are
resources and S3 transfers), and `import boto3` costs every cold start about 30 ms more (s3transfer,
multiprocessing; bench/bench_coldstart.py). All clients of a function share one session: its loader reads
the endpoint rules, partitions and each service model once (a session per client read them again for each
client: the launch function's four clients took 326 ms CPU from fresh sessions, 144 ms from one).
A session is not thread-safe, its clients are: clients are made under a lock (the sweeps' workers may ask
for one first)."""

from __future__ import annotations

import threading
from functools import cache
from typing import TYPE_CHECKING, Any

import botocore.session
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client

# Standard retry mode backs off on throttling (RequestLimitExceeded, ThrottlingException) with jitter.
CLIENT_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=20)
# The launch client makes one attempt per call: botocore would retry InsufficientInstanceCapacity (a 5xx)
# eight times in the same subnet. annex.aws.ec2.Ec2Capacity retries throttling and 5xx itself, with backoff,
# and moves on to the next subnet or type at once on a capacity error.
LAUNCH_CONFIG = Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=5, read_timeout=60)


_SESSION_LOCK = threading.Lock()


@cache
def session() -> botocore.session.Session:
    """The function's one botocore session (made on first use: nothing is created at import)."""
    return botocore.session.Session()


def _create(service: str, region: str | None, config: Config) -> Any:
    with _SESSION_LOCK:
        return session().create_client(service, region_name=region, config=config)


@cache
def client(service: str, region: str | None = None) -> Any:
    """A client with CLIENT_CONFIG, in the function's region unless `region` is given."""
    return _create(service, region, CLIENT_CONFIG)


def dynamodb() -> DynamoDBClient:
    return client("dynamodb")  # type: ignore[no-any-return]


def ec2() -> EC2Client:
    return client("ec2")  # type: ignore[no-any-return]


@cache
def ec2_launch() -> EC2Client:
    """EC2 for RunInstances/CreateFleet: no botocore retries (see LAUNCH_CONFIG)."""
    return _create("ec2", None, LAUNCH_CONFIG)  # type: ignore[no-any-return]
