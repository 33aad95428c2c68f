"""The API's page-token key: 32 random bytes drawn by whichever request function needs it first and kept
in the annex table, so every Lambda container (and the local stack) seals and opens tokens with the same
key. Free (one GetItem per cold start) and generated without a deploy-time step; readable by whoever can
read the table, who can read everything the tokens point at anyway (the key protects the tokens'
integrity and binding, not data). Rotation: delete the item; tokens sealed before then answer 422."""

from __future__ import annotations

import base64
import secrets

from annex.store._table import StoreBase

KEY_ITEM = ("CONFIG#page-token-key", "KEY")
KEY_BYTES = 32


class KeyRecords(StoreBase):
    def page_token_key(self, *, create: bool = True) -> bytes | None:
        """The stack's page-token key, created on first use (a racing creator's key wins for both).
        `create=False`: None while no key exists (then no token can be valid, and reading one must not
        write to the table)."""
        for _attempt in range(2):
            item = self._table.get(KEY_ITEM)
            if item is not None:
                return base64.b64decode(item["key"])
            if not create:
                return None
            drawn = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
            pk, sk = KEY_ITEM
            if self._table.put({"pk": pk, "sk": sk, "key": drawn}, condition="attribute_not_exists(pk)"):
                return base64.b64decode(drawn)
        raise RuntimeError("the page-token key item was written but cannot be read")  # pragma: no cover
