"""The annex table (DynamoDB). Every state change is a conditional write; ClientError codes become
domain exceptions here and nowhere else.

Item layout (one table, `pk`/`sk`):

| item          | pk               | sk                    | indexes                                  |
|---------------|------------------|-----------------------|------------------------------------------|
| annex         | ANNEX#<id>       | META                  | by-owner, all-annexes, due (lease, live) |
| instance      | ANNEX#<id>       | INST#<instance-id>    | due (reap, until recorded terminated)    |
| history event | ANNEX#<id>       | EVENT#<time>#<rand>   |                                          |
| name lock     | OWNER#<arn>      | NAME#<name>           | (exists while the annex is live)         |
| client token  | OWNER#<arn>      | TOKEN#<token>         |                                          |
| quota         | OWNER#<arn>      | QUOTA                 | `live`: instances held by live annexes   |
| sweep status  | SWEEP#<name>     | STATUS                |                                          |

The `due` index is sparse: only live annexes (`due_kind`="lease", `due_at` = lease expiry) and live
instances (`due_kind`="reap", `due_at` = when idle-reap must look at them) carry its keys, so the
sweeps read only what is due and never scan. An instance claimed for termination (`terminating`) keeps
its keys until the termination is recorded, so a crashed reap is finished by the next one.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from annex.core.clock import to_epoch, to_iso
from annex.core.errors import (
    AnnexNotFound,
    ConcurrentUpdate,
    LeaseConflict,
    LeaseNotDue,
    NameInUse,
    PolicyViolation,
    QuotaExceeded,
    Throttled,
)
from annex.core.models import (
    LIVE_INSTANCE_STATES,
    LIVE_STATES,
    Annex,
    AnnexDetail,
    AnnexState,
    EndReason,
    HistoryEvent,
    Instance,
    InstanceState,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

META = "META"
TRANSACTION_LIMIT = 100  # items in one TransactWriteItems
QUOTA = "QUOTA"
DUE_LEASE = "lease"
DUE_REAP = "reap"
INDEX_BY_OWNER = "by-owner"
INDEX_ALL = "all-annexes"
INDEX_DUE = "due"
BATCH_GET_MAX = 100  # keys per BatchGetItem request (the API's limit)
BATCH_GET_ATTEMPTS = 6
_STORAGE_ONLY = frozenset(
    {"pk", "sk", "kind", "created_key", "due_kind", "due_at", "held", "expires_at", "fingerprint"}
)
_LIVE = [s.value for s in LIVE_STATES]
_ser = TypeSerializer()
_de = TypeDeserializer()


def annex_pk(annex_id: str) -> str:
    return f"ANNEX#{annex_id}"


def owner_pk(owner: str) -> str:
    return f"OWNER#{owner}"


def instance_sk(instance_id: str) -> str:
    return f"INST#{instance_id}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def to_attrs(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(v) for k, v in data.items() if v is not None}


def from_attrs(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


def _model_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _STORAGE_ONLY}


def annex_from_item(item: dict[str, Any]) -> Annex:
    return Annex.model_validate(_model_fields(item))


def instance_from_item(item: dict[str, Any]) -> Instance:
    return Instance.model_validate(_model_fields(item))


def _cancel_codes(exc: ClientError) -> list[str]:
    reasons = exc.response.get("CancellationReasons") or []
    return [r.get("Code", "None") or "None" for r in reasons]


def encode_page_token(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode()


def decode_page_token(token: str | None) -> dict[str, Any] | None:
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as exc:
        raise PolicyViolation("next_token is not a token this API returned", field="next_token") from exc
    if not isinstance(key, dict) or not all(isinstance(v, dict) for v in key.values()):
        raise PolicyViolation("next_token is not a token this API returned", field="next_token")
    return key


@dataclass(frozen=True)
class TokenRecord:
    annex_id: str
    fingerprint: str


@dataclass(frozen=True)
class DueItem:
    """A row of the sparse `due` index."""

    pk: str
    sk: str
    due_at: int

    @property
    def annex_id(self) -> str:
        return self.pk.removeprefix("ANNEX#")

    @property
    def instance_id(self) -> str | None:
        return self.sk.removeprefix("INST#") if self.sk.startswith("INST#") else None


class InstanceEnd(StrEnum):
    """What `end_instance` did."""

    RELEASED = "released"  # recorded, and one quota unit went back
    MARKED = "marked"  # recorded; the annex had already ended and released everything
    UNCHANGED = "unchanged"  # it was already recorded as terminated (or was never recorded)


class AnnexStore:
    """All reads and writes of the annex table."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._db = client
        self.table_name = table_name
        self.items_read = 0  # read units of work, for the sweep metrics and benchmarks

    # --- annexes --------------------------------------------------------------------------------

    @staticmethod
    def new_annex_id() -> str:
        return f"ax-{secrets.token_hex(8)}"

    def annex_item(self, annex: Annex, *, held: int, fingerprint: str | None = None) -> dict[str, Any]:
        data = annex.model_dump(mode="json")
        data.update(
            pk=annex_pk(annex.id),
            sk=META,
            kind="annex",
            created_key=f"{data['created_at']}#{annex.id}",
            held=held,
            fingerprint=fingerprint,
        )
        if annex.live:
            data.update(due_kind=DUE_LEASE, due_at=to_epoch(annex.lease_expires_at))
        return data

    def create_annex(
        self,
        annex: Annex,
        *,
        fingerprint: str,
        max_live_per_owner: int,
        actor: str,
        retention: timedelta,
    ) -> None:
        """Write the annex, its name lock, its client token and its quota reservation atomically.

        Raises NameInUse, QuotaExceeded, or TokenTaken (a concurrent create with the same token won).
        """
        owner = owner_pk(annex.owner)
        item = self.annex_item(annex, held=annex.count, fingerprint=fingerprint)
        ops: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": to_attrs(item),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Put": {
                    "TableName": self.table_name,
                    "Item": to_attrs({"pk": owner, "sk": f"NAME#{annex.name}", "annex_id": annex.id}),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_attrs({"pk": owner, "sk": QUOTA}),
                    "UpdateExpression": "ADD #live :n",
                    "ConditionExpression": "attribute_not_exists(#live) OR #live <= :room",
                    "ExpressionAttributeNames": {"#live": "live"},
                    "ExpressionAttributeValues": to_attrs(
                        {":n": annex.count, ":room": max_live_per_owner - annex.count}
                    ),
                }
            },
            self._event_put(annex.id, annex.created_at, actor, "requested", self._describe(annex)),
        ]
        if annex.client_token:
            expires = to_epoch(annex.created_at + retention)
            ops.append(
                {
                    "Put": {
                        "TableName": self.table_name,
                        "Item": to_attrs(
                            {
                                "pk": owner,
                                "sk": f"TOKEN#{annex.client_token}",
                                "annex_id": annex.id,
                                "fingerprint": fingerprint,
                                "expires_at": expires,
                            }
                        ),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        try:
            self._db.transact_write_items(TransactItems=ops)  # type: ignore[arg-type]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            codes = _cancel_codes(exc)
            if len(codes) > 4 and codes[4] == "ConditionalCheckFailed":
                raise TokenTaken(annex.client_token or "") from exc
            if codes[1] == "ConditionalCheckFailed":
                raise NameInUse(
                    f"you already have a live annex named '{annex.name}'; choose another name "
                    "or stop that annex first",
                    field="name",
                ) from exc
            if codes[2] == "ConditionalCheckFailed":
                live = self.live_instances(annex.owner)
                raise QuotaExceeded(
                    f"this would bring your live instances to {live + annex.count}, over the limit "
                    f"of {max_live_per_owner}; stop an annex or ask for fewer",
                    field="count",
                ) from exc
            if "TransactionConflict" in codes:
                raise ConcurrentUpdate(
                    "another request changed your annexes at the same moment; retry"
                ) from exc
            raise

    @staticmethod
    def _describe(annex: Annex) -> str:
        return (
            f"{annex.count} x {'/'.join(annex.instance_types)} {annex.market.value}, "
            f"lease until {to_iso(annex.lease_expires_at)}, idle timeout {annex.idle_timeout_seconds}s"
        )

    def get_annex(self, annex_id: str, *, consistent: bool = True) -> Annex:
        item = self.get_annex_item(annex_id, consistent=consistent)
        if item is None:
            raise AnnexNotFound(f"no annex {annex_id}")
        return Annex.model_validate(_model_fields(item))

    def get_annex_item(self, annex_id: str, *, consistent: bool = True) -> dict[str, Any] | None:
        resp = self._db.get_item(
            TableName=self.table_name,
            Key=to_attrs({"pk": annex_pk(annex_id), "sk": META}),
            ConsistentRead=consistent,
        )
        self.items_read += 1
        return from_attrs(resp["Item"]) if "Item" in resp else None

    def get_detail(self, annex_id: str) -> AnnexDetail:
        annex: dict[str, Any] | None = None
        instances: list[Instance] = []
        history: list[HistoryEvent] = []
        for item in self._query_partition(annex_pk(annex_id)):
            sk = item["sk"]
            if sk == META:
                annex = _model_fields(item)
            elif sk.startswith("INST#"):
                instances.append(Instance.model_validate(_model_fields(item)))
            elif sk.startswith("EVENT#"):
                history.append(HistoryEvent.model_validate(_model_fields(item)))
        if annex is None:
            raise AnnexNotFound(f"no annex {annex_id}")
        return AnnexDetail.model_validate({**annex, "instances": instances, "history": history})

    def _query_partition(self, pk: str, sk_prefix: str | None = None) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": to_attrs({":pk": pk}),
            "ConsistentRead": True,
        }
        if sk_prefix:
            kwargs["KeyConditionExpression"] += " AND begins_with(sk, :p)"
            kwargs["ExpressionAttributeValues"] = to_attrs({":pk": pk, ":p": sk_prefix})
        while True:
            resp = self._db.query(**kwargs)
            self.items_read += len(resp.get("Items", []))
            yield from (from_attrs(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def find_token(self, owner: str, token: str) -> TokenRecord | None:
        resp = self._db.get_item(
            TableName=self.table_name,
            Key=to_attrs({"pk": owner_pk(owner), "sk": f"TOKEN#{token}"}),
            ConsistentRead=True,
        )
        if "Item" not in resp:
            return None
        item = from_attrs(resp["Item"])
        return TokenRecord(annex_id=item["annex_id"], fingerprint=item["fingerprint"])

    def live_instances(self, owner: str) -> int:
        resp = self._db.get_item(
            TableName=self.table_name, Key=to_attrs({"pk": owner_pk(owner), "sk": QUOTA}), ConsistentRead=True
        )
        return int(from_attrs(resp["Item"]).get("live", 0)) if "Item" in resp else 0

    def list_annexes(
        self, *, owner: str | None, limit: int, page_token: str | None
    ) -> tuple[list[Annex], str | None]:
        """Newest first. `owner=None` lists every owner's annexes (administrators)."""
        if owner is None:
            index, cond, values = INDEX_ALL, "kind = :k", {":k": "annex"}
        else:
            index, cond, values = INDEX_BY_OWNER, "#o = :o", {":o": owner}
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": index,
            "KeyConditionExpression": cond,
            "ExpressionAttributeValues": to_attrs(values),
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if owner is not None:
            kwargs["ExpressionAttributeNames"] = {"#o": "owner"}
        start = decode_page_token(page_token)
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = self._db.query(**kwargs)
        annexes = [Annex.model_validate(_model_fields(from_attrs(i))) for i in resp.get("Items", [])]
        return annexes, encode_page_token(resp.get("LastEvaluatedKey"))

    # --- state changes --------------------------------------------------------------------------

    def extend_lease(
        self, annex: Annex, new_expiry: datetime, *, actor: str, now: datetime, note: str
    ) -> Annex:
        """Move the lease expiry. Conditional on the version read and on the annex being live."""
        updated = annex.model_copy(
            update={"lease_expires_at": new_expiry, "updated_at": now, "version": annex.version + 1}
        )
        ops = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_attrs({"pk": annex_pk(annex.id), "sk": META}),
                    "UpdateExpression": "SET lease_expires_at = :exp, due_at = :due, updated_at = :now, "
                    "version = :next",
                    "ConditionExpression": "version = :v AND #s IN (:s0, :s1, :s2)",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": to_attrs(
                        {
                            ":exp": to_iso(new_expiry),
                            ":due": to_epoch(new_expiry),
                            ":now": to_iso(now),
                            ":next": annex.version + 1,
                            ":v": annex.version,
                            ":s0": _LIVE[0],
                            ":s1": _LIVE[1],
                            ":s2": _LIVE[2],
                        }
                    ),
                }
            },
            self._event_put(annex.id, now, actor, "extended", note),
        ]
        try:
            self._db.transact_write_items(TransactItems=ops)  # type: ignore[arg-type]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "TransactionCanceledException":
                raise
            current = self.get_annex(annex.id)
            if not current.live:
                raise LeaseConflict(
                    f"annex {annex.id} has {current.state.value}; it cannot be extended"
                ) from exc
            raise ConcurrentUpdate(f"annex {annex.id} changed while extending; retry") from exc
        return updated

    def set_state(
        self,
        annex_id: str,
        *,
        expected: Iterable[AnnexState],
        new_state: AnnexState,
        now: datetime,
        actor: str,
        detail: str = "",
        extra: dict[str, Any] | None = None,
        release: int = 0,
        owner: str | None = None,
    ) -> bool:
        """Conditional state transition with a history event; False if the annex was not in `expected`.

        `release` quota units go back to `owner` in the same transaction (partial launches)."""
        expected = list(expected)
        names = {"#s": "state"}
        values: dict[str, Any] = {":new": new_state.value, ":now": to_iso(now)}
        sets = ["#s = :new", "updated_at = :now", "version = version + :one"]
        values[":one"] = 1
        for i, (key, value) in enumerate((extra or {}).items()):
            names[f"#x{i}"] = key
            values[f":x{i}"] = value
            sets.append(f"#x{i} = :x{i}")
        placeholders = []
        for i, state in enumerate(expected):
            values[f":e{i}"] = state.value
            placeholders.append(f":e{i}")
        update = "SET " + ", ".join(sets)
        if release:
            update += " ADD held :neg"
            values[":neg"] = -release
        ops: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self.table_name,
                    "Key": to_attrs({"pk": annex_pk(annex_id), "sk": META}),
                    "UpdateExpression": update,
                    "ConditionExpression": f"#s IN ({', '.join(placeholders)})",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_attrs(values),
                }
            },
            self._event_put(annex_id, now, actor, new_state.value, detail),
        ]
        if release and owner:
            ops.append(self._quota_add(owner, -release))
        try:
            self._db.transact_write_items(TransactItems=ops)  # type: ignore[arg-type]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "TransactionCanceledException" and _cancel_codes(exc)[0] == (
                "ConditionalCheckFailed"
            ):
                return False
            raise
        return True

    def end_annex(
        self,
        annex_id: str,
        *,
        reason: EndReason,
        now: datetime,
        actor: str,
        retention: timedelta,
        detail: str = "",
        final_state: AnnexState = AnnexState.ENDED,
        due_by: datetime | None = None,
    ) -> Annex | None:
        """End a live annex: state, name lock, quota and history in one transaction.

        Returns the ended annex, or None if it had already ended (another writer won; nothing changed).
        With `due_by` (the lease-check), the annex ends only if its lease has passed by then on this
        consistent read: an extension that raced the eventually consistent `due` index wins, and
        LeaseNotDue is raised. (Extending bumps `version`, which the write is conditional on.)
        """
        for _attempt in range(5):
            item = self.get_annex_item(annex_id)
            if item is None:
                raise AnnexNotFound(f"no annex {annex_id}")
            annex = Annex.model_validate(_model_fields(item))
            if not annex.live:
                return None
            if due_by is not None and annex.lease_expires_at > due_by:
                raise LeaseNotDue(
                    f"annex {annex_id} was extended to {to_iso(annex.lease_expires_at)}; not due yet"
                )
            held = int(item.get("held", 0))
            ops: list[dict[str, Any]] = [
                {
                    "Update": {
                        "TableName": self.table_name,
                        "Key": to_attrs({"pk": annex_pk(annex_id), "sk": META}),
                        "UpdateExpression": (
                            "SET #s = :ended, end_reason = :r, ended_at = :now, updated_at = :now,"
                            " version = :next, held = :zero, expires_at = :ttl REMOVE due_kind, due_at"
                        ),
                        "ConditionExpression": "version = :v AND held = :held",
                        "ExpressionAttributeNames": {"#s": "state"},
                        "ExpressionAttributeValues": to_attrs(
                            {
                                ":ended": final_state.value,
                                ":r": reason.value,
                                ":now": to_iso(now),
                                ":next": annex.version + 1,
                                ":zero": 0,
                                ":ttl": to_epoch(now + retention),
                                ":v": annex.version,
                                ":held": held,
                            }
                        ),
                    }
                },
                {
                    "Delete": {
                        "TableName": self.table_name,
                        "Key": to_attrs({"pk": owner_pk(annex.owner), "sk": f"NAME#{annex.name}"}),
                        "ConditionExpression": "attribute_not_exists(pk) OR annex_id = :id",
                        "ExpressionAttributeValues": to_attrs({":id": annex_id}),
                    }
                },
                self._event_put(annex_id, now, actor, final_state.value, detail or reason.value),
            ]
            if held:
                ops.append(self._quota_add(annex.owner, -held))
            try:
                self._db.transact_write_items(TransactItems=ops)  # type: ignore[arg-type]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                continue  # someone else moved it; read again and decide
            return annex.model_copy(
                update={
                    "state": final_state,
                    "end_reason": reason,
                    "ended_at": now,
                    "updated_at": now,
                    "version": annex.version + 1,
                }
            )
        raise ConcurrentUpdate(f"annex {annex_id} kept changing while ending; the next sweep will finish it")

    def _quota_add(self, owner: str, delta: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self.table_name,
                "Key": to_attrs({"pk": owner_pk(owner), "sk": QUOTA}),
                "UpdateExpression": "ADD #live :d",
                "ExpressionAttributeNames": {"#live": "live"},
                "ExpressionAttributeValues": to_attrs({":d": delta}),
            }
        }

    # --- instances ------------------------------------------------------------------------------

    def instance_item(self, instance: Instance, *, reap_at: datetime | None) -> dict[str, Any]:
        data = instance.model_dump(mode="json")
        data.update(pk=annex_pk(instance.annex_id), sk=f"INST#{instance.instance_id}")
        if reap_at is not None and instance.state in LIVE_INSTANCE_STATES:
            data.update(due_kind=DUE_REAP, due_at=to_epoch(reap_at))
        return data

    def put_instances(self, instances: Sequence[Instance], *, reap_at: datetime | None) -> None:
        """Record launched instances (idempotent: an existing record is left as it is).

        Up to 100 records go in one transaction of conditional puts. When a record already exists (a
        launch resumed after a crash) the transaction is cancelled whole, and that chunk is written one
        record at a time, skipping the ones that exist."""
        items = [to_attrs(self.instance_item(instance, reap_at=reap_at)) for instance in instances]
        for start in range(0, len(items), TRANSACTION_LIMIT):
            chunk = items[start : start + TRANSACTION_LIMIT]
            try:
                self._db.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self.table_name,
                                "Item": item,
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        }
                        for item in chunk
                    ]
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                self._put_each_new(chunk)

    def _put_each_new(self, items: Sequence[dict[str, Any]]) -> None:
        for item in items:
            try:
                self._db.put_item(
                    TableName=self.table_name, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise

    def list_instances(self, annex_id: str) -> list[Instance]:
        return [
            Instance.model_validate(_model_fields(item))
            for item in self._query_partition(annex_pk(annex_id), "INST#")
        ]

    def mark_instances_ended(
        self,
        annex_id: str,
        instance_ids: Iterable[str],
        *,
        reason: EndReason,
        now: datetime,
        retention: timedelta,
    ) -> int:
        """Record that TerminateInstances was sent; leaves the due index. Returns how many changed."""
        changed = 0
        for instance_id in instance_ids:
            try:
                self._db.update_item(
                    TableName=self.table_name,
                    Key=to_attrs({"pk": annex_pk(annex_id), "sk": f"INST#{instance_id}"}),
                    UpdateExpression="SET #s = :t, end_reason = :r, ended_at = :now, expires_at = :ttl "
                    "REMOVE due_kind, due_at",
                    ConditionExpression="attribute_exists(pk) AND #s <> :t",
                    ExpressionAttributeNames={"#s": "state"},
                    ExpressionAttributeValues=to_attrs(
                        {
                            ":t": InstanceState.TERMINATED.value,
                            ":r": reason.value,
                            ":now": to_iso(now),
                            ":ttl": to_epoch(now + retention),
                        }
                    ),
                )
                changed += 1
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        return changed

    # --- history and sweeps ---------------------------------------------------------------------

    def _event_put(self, annex_id: str, at: datetime, actor: str, action: str, detail: str) -> dict[str, Any]:
        event = HistoryEvent(at=at, actor=actor, action=action, detail=detail)
        item = event.model_dump(mode="json")
        # `at` is the logical time (tests move it); the wall-clock nanoseconds order events within a second.
        item.update(
            pk=annex_pk(annex_id), sk=f"EVENT#{to_iso(at)}#{time.time_ns():020d}{secrets.token_hex(2)}"
        )
        return {"Put": {"TableName": self.table_name, "Item": to_attrs(item)}}

    def add_event(self, annex_id: str, *, at: datetime, actor: str, action: str, detail: str = "") -> None:
        put = self._event_put(annex_id, at, actor, action, detail)["Put"]
        self._db.put_item(TableName=put["TableName"], Item=put["Item"])

    def record_sweep(self, name: str, *, now: datetime, detail: dict[str, Any] | None = None) -> None:
        self._db.put_item(
            TableName=self.table_name,
            Item=to_attrs(
                {"pk": f"SWEEP#{name}", "sk": "STATUS", "last_success_at": to_iso(now), **(detail or {})}
            ),
        )

    def sweep_status(self, name: str) -> str | None:
        resp = self._db.get_item(
            TableName=self.table_name, Key=to_attrs({"pk": f"SWEEP#{name}", "sk": "STATUS"})
        )
        return from_attrs(resp["Item"]).get("last_success_at") if "Item" in resp else None

    def query_due(self, kind: str, *, now: datetime, limit: int = 1000) -> Iterator[DueItem]:
        """Items of the sparse `due` index whose time has come: cost grows with what is due only."""
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "IndexName": INDEX_DUE,
            "KeyConditionExpression": "due_kind = :k AND due_at <= :now",
            "ExpressionAttributeValues": to_attrs({":k": kind, ":now": to_epoch(now)}),
            "Limit": limit,
        }
        while True:
            resp = self._db.query(**kwargs)
            self.items_read += len(resp.get("Items", []))
            for raw in resp.get("Items", []):
                item = from_attrs(raw)
                yield DueItem(pk=item["pk"], sk=item["sk"], due_at=int(item["due_at"]))
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # --- fail-safe: batch reads, heartbeats, one instance at a time -------------------------------

    def get_items(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Strongly consistent BatchGetItem of (pk, sk) keys, 100 per request; missing keys are absent
        from the result. Unprocessed keys (throttling) are retried with backoff."""
        wanted = sorted(set(keys))
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for start in range(0, len(wanted), BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.table_name: {
                    "Keys": [
                        to_attrs({"pk": pk, "sk": sk}) for pk, sk in wanted[start : start + BATCH_GET_MAX]
                    ],
                    "ConsistentRead": True,
                }
            }
            for attempt in range(BATCH_GET_ATTEMPTS):
                resp = self._db.batch_get_item(RequestItems=request)
                items = resp.get("Responses", {}).get(self.table_name, [])
                self.items_read += len(items)
                for raw in items:
                    item = from_attrs(raw)
                    found[(item["pk"], item["sk"])] = item
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(0.05 * 2**attempt, 1.0))
            else:
                raise Throttled("DynamoDB kept some reads unprocessed; the next sweep will retry")
        return found

    def get_annex_items(self, annex_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The META items of these annexes (batched, consistent), by annex id; missing ones are absent."""
        items = self.get_items((annex_pk(a), META) for a in annex_ids)
        return {pk.removeprefix("ANNEX#"): item for (pk, _sk), item in items.items()}

    def apply_heartbeat(
        self,
        annex_id: str,
        instance_id: str,
        *,
        now: datetime,
        claimed_slots: int,
        total_slots: int,
        idle_since: datetime | None,
        due_at: datetime,
        seen_heartbeat: str | None,
    ) -> bool:
        """Record one heartbeat: one conditional UpdateItem. It applies only if the instance is still
        live and nobody recorded a heartbeat since `seen_heartbeat` (optimistic concurrency), so a
        duplicate or late report never moves `last_heartbeat_at` backwards. False if it did not apply."""
        values: dict[str, Any] = {
            ":now": to_iso(now),
            ":claimed": claimed_slots,
            ":total": total_slots,
            ":reap": DUE_REAP,
            ":due": to_epoch(due_at),
        }
        update = (
            "SET last_heartbeat_at = :now, claimed_slots = :claimed, total_slots = :total, #s = :running,"
            " due_kind = :reap, due_at = :due"
        )
        if idle_since is None:
            update += " REMOVE idle_since"
        else:
            update += ", idle_since = :idle"
            values[":idle"] = to_iso(idle_since)
        return self._update_unheard(annex_id, instance_id, update, values, seen_heartbeat=seen_heartbeat)

    def reschedule_instance(
        self, annex_id: str, instance_id: str, *, due_at: datetime, seen_heartbeat: str | None
    ) -> bool:
        """Move an instance's next reap check, unless a heartbeat landed since it was read."""
        values = {":due": to_epoch(due_at)}
        return self._update_unheard(
            annex_id, instance_id, "SET due_at = :due", values, seen_heartbeat=seen_heartbeat
        )

    def begin_instance_termination(
        self, annex_id: str, instance_id: str, *, reason: EndReason, seen_heartbeat: str | None
    ) -> bool:
        """Claim a live instance for termination (state `terminating`, reason kept) unless a heartbeat
        landed since it was read. It stays in the `due` index until the termination is recorded, so a
        crash between this and TerminateInstances is finished by the next sweep."""
        values = {":t": InstanceState.TERMINATING.value, ":reason": reason.value}
        return self._update_unheard(
            annex_id, instance_id, "SET #s = :t, end_reason = :reason", values, seen_heartbeat=seen_heartbeat
        )

    def _update_unheard(
        self,
        annex_id: str,
        instance_id: str,
        update: str,
        values: dict[str, Any],
        *,
        seen_heartbeat: str | None,
    ) -> bool:
        """UpdateItem on a live (pending or running) instance record, unless a heartbeat was recorded
        since `seen_heartbeat` (None: none ever was). False if that condition failed."""
        values = {**values, ":pending": InstanceState.PENDING.value, ":running": InstanceState.RUNNING.value}
        condition = "attribute_exists(pk) AND #s IN (:pending, :running) AND "
        if seen_heartbeat is None:
            condition += "attribute_not_exists(last_heartbeat_at)"
        else:
            condition += "last_heartbeat_at = :seen"
            values[":seen"] = seen_heartbeat
        try:
            self._db.update_item(
                TableName=self.table_name,
                Key=to_attrs({"pk": annex_pk(annex_id), "sk": instance_sk(instance_id)}),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues=to_attrs(values),
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def end_instance(
        self,
        annex_id: str,
        instance_id: str,
        *,
        owner: str,
        reason: EndReason,
        now: datetime,
        actor: str,
        retention: timedelta,
        detail: str = "",
    ) -> InstanceEnd:
        """Record that one instance was terminated and give its quota unit back, exactly once.

        One transaction: the instance item (conditional on not being terminated yet) leaves the `due`
        index; the annex gives back one held unit (conditional on being live with `held` > 0); the
        owner's quota gets one unit back; a history event. If the annex has already ended, `end_annex`
        released everything it held, so the instance is only marked.
        """
        instance_update = {
            "Update": {
                "TableName": self.table_name,
                "Key": to_attrs({"pk": annex_pk(annex_id), "sk": instance_sk(instance_id)}),
                "UpdateExpression": "SET #s = :t, end_reason = :r, ended_at = :now, expires_at = :ttl "
                "REMOVE due_kind, due_at",
                "ConditionExpression": "attribute_exists(pk) AND #s <> :t",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": to_attrs(
                    {
                        ":t": InstanceState.TERMINATED.value,
                        ":r": reason.value,
                        ":now": to_iso(now),
                        ":ttl": to_epoch(now + retention),
                    }
                ),
            }
        }
        annex_update = {
            "Update": {
                "TableName": self.table_name,
                "Key": to_attrs({"pk": annex_pk(annex_id), "sk": META}),
                "UpdateExpression": "ADD held :neg",
                "ConditionExpression": "#s IN (:s0, :s1, :s2) AND held > :zero",
                "ExpressionAttributeNames": {"#s": "state"},
                "ExpressionAttributeValues": to_attrs(
                    {":neg": -1, ":zero": 0, ":s0": _LIVE[0], ":s1": _LIVE[1], ":s2": _LIVE[2]}
                ),
            }
        }
        for _attempt in range(5):
            ops = [
                instance_update,
                annex_update,
                self._quota_add(owner, -1),
                self._event_put(
                    annex_id, now, actor, "instance-terminated", f"{instance_id}: {detail or reason.value}"
                ),
            ]
            try:
                self._db.transact_write_items(TransactItems=ops)  # type: ignore[arg-type]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    raise
                codes = _cancel_codes(exc)
                if codes[0] == "ConditionalCheckFailed":
                    return InstanceEnd.UNCHANGED  # already recorded (or never recorded): nothing to give back
                if codes[1] == "ConditionalCheckFailed":
                    marked = self.mark_instances_ended(
                        annex_id, [instance_id], reason=reason, now=now, retention=retention
                    )
                    return InstanceEnd.MARKED if marked else InstanceEnd.UNCHANGED
                if "TransactionConflict" in codes:
                    continue
                raise
            return InstanceEnd.RELEASED
        raise ConcurrentUpdate(f"instance {instance_id} kept changing; the next sweep will finish it")


class TokenTaken(Exception):
    """A concurrent create with the same client token committed first."""
