"""Page tokens bound to who asked: the store's `next_token` is sealed with an HMAC at the API edge before
it leaves, and unsealed (verified) before it goes back to the store. A token someone crafted, changed, or
got from another caller's or another scope's listing is refused with 422 and never reaches DynamoDB.

The key is the stack's own (`AnnexStore.page_token_key`: drawn once, kept in the annex table), read once
per container, so a token issued by one Lambda container is accepted by every other; a token sealed with
any other key answers 422 ("list again").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

from annex.core.errors import PolicyViolation

MIN_KEY_BYTES = 32
_MAC_BYTES = 16


class PageTokenKey:
    """The key, loaded once per container from `load(create)`. Sealing creates it if the stack has none
    yet; opening never does (no key yet: no token can be valid), so a refused request writes nothing."""

    def __init__(self, load: Callable[..., bytes | None]) -> None:
        self._load = load
        self._key: bytes | None = None

    def _get(self, *, create: bool) -> bytes | None:
        if self._key is None:
            key = self._load(create=create)
            if key is not None and len(key) < MIN_KEY_BYTES:
                raise ValueError(f"a page-token key has at least {MIN_KEY_BYTES} bytes")
            self._key = key
        return self._key

    def seal(self, inner: str | None, *, binding: str) -> str | None:
        return None if inner is None else seal(inner, binding=binding, key=self._get(create=True) or b"")

    def unseal(self, token: str | None, *, binding: str, field: str = "next_token") -> str | None:
        if token is None:
            return None
        key = self._get(create=False)
        if key is None:
            raise _refused(field)
        return unseal(token, binding=binding, key=key, field=field)


def _refused(field: str) -> PolicyViolation:
    return PolicyViolation(
        f"{field} is not a token this API returned for this listing; list again from the start", field=field
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, binding: str, inner: bytes) -> bytes:
    return hmac.new(key, binding.encode() + b"\n" + inner, hashlib.sha256).digest()[:_MAC_BYTES]


def seal(inner: str | None, *, binding: str, key: bytes) -> str | None:
    """The token handed to the caller for the store's own token `inner` (None: no further page)."""
    if inner is None:
        return None
    data = inner.encode()
    return f"{_b64(data)}.{_b64(_mac(key, binding, data))}"


def unseal(token: str | None, *, binding: str, key: bytes, field: str = "next_token") -> str | None:
    """The store's token inside `token`, if this API issued it for this `binding`; else PolicyViolation
    naming `field` (the query parameter it came in)."""
    if token is None:
        return None
    refused = _refused(field)
    body, dot, mac = token.partition(".")
    if not dot or not body or not mac or not token.isascii():
        raise refused
    try:
        data, given = _unb64(body), _unb64(mac)
    except (binascii.Error, ValueError):
        raise refused from None
    if not hmac.compare_digest(given, _mac(key, binding, data)):
        raise refused
    try:
        return data.decode()
    except UnicodeDecodeError:  # pragma: no cover - the MAC proves we encoded it
        raise refused from None
