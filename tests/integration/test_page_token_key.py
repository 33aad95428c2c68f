"""The page-token key is the stack's own (drawn once, kept in the annex table): a token one Lambda
container issued is accepted by another; a token sealed with any other key is refused."""

from __future__ import annotations

import secrets

import boto3
from annex.api import pagetoken
from annex.aws import clients
from annex.store import AnnexStore

from tests.integration.conftest import ALICE, TABLE

BODY = {"lease": "4h", "idle_timeout": "15m", "count": 1}


def new_container(api) -> None:
    """What a cold start in another container sees: nothing cached."""
    api.module.settings.cache_clear()
    api.module.service.cache_clear()
    api.module.page_token_key.cache_clear()
    clients.client.cache_clear()


def first_page(api) -> tuple[dict, str]:
    for i in range(3):
        assert api.call("POST", "/annexes", body={**BODY, "name": f"page-{i}"})[0] == 201
    status, first = api.call("GET", "/annexes", query={"limit": "2"})
    assert status == 200
    assert first["next_token"]
    return first, first["next_token"]


def test_a_token_from_one_container_is_accepted_by_another(api):
    first, token = first_page(api)
    new_container(api)

    status, second = api.call("GET", "/annexes", query={"limit": "2", "next_token": token})

    assert status == 200, second
    names = sorted(a["name"] for a in first["annexes"] + second["annexes"])
    assert names == ["page-0", "page-1", "page-2"]


def test_a_token_sealed_with_another_key_is_refused(api):
    _, token = first_page(api)
    body, _, _ = token.partition(".")
    inner = pagetoken._unb64(body).decode()
    other = pagetoken.seal(inner, binding=f"{ALICE}\nmine", key=secrets.token_bytes(32))

    status, refused = api.call("GET", "/annexes", query={"limit": "2", "next_token": other})

    assert status == 422
    assert [f["field"] for f in refused["fields"]] == ["next_token"]


def test_two_stores_drawing_the_key_at_once_agree_on_one(ddb):
    one = AnnexStore(boto3.client("dynamodb", region_name="us-east-1"), TABLE)
    two = AnnexStore(boto3.client("dynamodb", region_name="us-east-1"), TABLE)
    # both find no key; the second's conditional write loses and it reads the first's
    real_get, reads = two._table.get, []

    def get_missing_first(key, **kw):
        reads.append(key)
        return None if len(reads) == 1 else real_get(key, **kw)

    two._table.get = get_missing_first  # type: ignore[method-assign]
    first = one.page_token_key()
    assert two.page_token_key() == first
    assert len(first) == 32
    assert len(reads) == 2  # it read, lost the conditional write, and read the winner's key
    assert one.page_token_key() == first


def test_a_refused_token_before_any_key_exists_writes_nothing(api, ddb):
    from tests.integration.conftest import table_items

    status, annex = api.call("POST", "/annexes", body={**BODY, "name": "one"})
    assert status == 201
    before = table_items(ddb)
    forged = pagetoken.seal("e30", binding=f"{ALICE}\nmine", key=secrets.token_bytes(32))
    for path, query in [
        ("/annexes", {"next_token": forged}),
        (f"/annexes/{annex['id']}", {"history_next_token": forged}),
    ]:
        status, body = api.call("GET", path, query=query)
        assert status == 422, body
    assert api.call("GET", f"/annexes/{annex['id']}")[0] == 200  # one page: no token to seal
    assert table_items(ddb) == before  # no key item was drawn for a refusal
