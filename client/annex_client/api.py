"""The Annex API's routes (functions/request/app.py), as plain dicts: the client must not need pydantic."""

from __future__ import annotations

import builtins
import re
import uuid
from typing import Any
from urllib.parse import quote

from annex_client.errors import ConfigError, Refused
from annex_client.transport import Transport

ANNEX_ID = re.compile(r"^ax-[0-9a-f]{16}$")
LIVE_STATES = ("requested", "launching", "running")
PAGE_SIZE = 100


class AnnexApi:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def health(self) -> dict[str, Any]:
        return dict(self.transport.call("GET", "/health").body)

    def create(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Returns (annex, created). Safe to repeat: the body carries a client token, so a retry after a
        lost answer returns the first annex (HTTP 200) instead of creating a second one."""
        reply = self.transport.call("POST", "/annexes", body=body, idempotent=True)
        return dict(reply.body), reply.status == 201

    def list(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        """Every page, newest first."""
        annexes: list[dict[str, Any]] = []
        query = {"limit": str(PAGE_SIZE), "scope": "all" if everyone else "mine"}
        while True:
            page = self.transport.call("GET", "/annexes", query=query).body
            annexes.extend(page.get("annexes", []))
            if not page.get("next_token"):
                return annexes
            query["next_token"] = page["next_token"]

    def get(self, annex_id: str, *, all_history: bool = False) -> dict[str, Any]:
        """The annex with the newest page of its history; `all_history`: every page, newest first."""
        path = f"/annexes/{quote(annex_id, safe='')}"
        detail = dict(self.transport.call("GET", path).body)
        if not all_history:
            return detail
        history = list(detail.get("history") or [])
        while detail.get("history_next_token"):
            query = {"history_limit": str(PAGE_SIZE), "history_next_token": str(detail["history_next_token"])}
            page = self.transport.call("GET", path, query=query).body
            history.extend(page.get("history") or [])
            detail["history_next_token"] = page.get("history_next_token")
        detail["history"] = history
        return detail

    def extend(
        self,
        annex_id: str,
        *,
        by: str | None = None,
        until: str | None = None,
        client_token: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"by": by} if by is not None else {"until": until}
        # `by` adds to the current expiry: a retry after a lost answer is safe only with a client token,
        # which makes the API answer the first extension instead of extending twice.
        body["client_token"] = client_token or f"annex-client-{uuid.uuid4().hex}"
        reply = self.transport.call("POST", f"/annexes/{quote(annex_id, safe='')}/extend", body=body)
        return dict(reply.body)

    def shorten(self, annex_id: str, *, to: str | None = None, until: str | None = None) -> dict[str, Any]:
        body = {"to": to} if to is not None else {"until": until}
        # `to` counts from now: repeated after a lost answer it would move the end again.
        reply = self.transport.call(
            "POST", f"/annexes/{quote(annex_id, safe='')}/shorten", body=body, idempotent=until is not None
        )
        return dict(reply.body)

    def set_idle_timeout(self, annex_id: str, idle_timeout: str) -> dict[str, Any]:
        body = {"idle_timeout": idle_timeout}
        reply = self.transport.call(
            "POST", f"/annexes/{quote(annex_id, safe='')}/idle-timeout", body=body, idempotent=True
        )
        return dict(reply.body)

    def stop(self, annex_id: str, *, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        reply = self.transport.call("POST", f"/annexes/{quote(annex_id, safe='')}/stop", body=body)
        return dict(reply.body)

    def estimate(self, body: dict[str, Any]) -> dict[str, Any]:
        """What a request ({"request": ...}) or an extension ({"extend": ...}) would cost, and whether
        the month's budget allows it. Changes nothing."""
        return dict(self.transport.call("POST", "/estimates", body=body, idempotent=True).body)

    def notify(self, email: str) -> dict[str, Any]:
        return dict(
            self.transport.call("POST", "/notifications", body={"email": email}, idempotent=True).body
        )

    def set_budget(self, owner: str, monthly_usd: str) -> dict[str, Any]:
        body = {"owner": owner, "monthly_usd": monthly_usd}
        return dict(self.transport.call("PUT", "/admin/budgets", body=body, idempotent=True).body)

    def spend(self, month: str | None = None) -> dict[str, Any]:
        query = {"month": month} if month else None
        return dict(self.transport.call("GET", "/admin/spend", query=query).body)

    def _others_named(self, name: str) -> builtins.list[dict[str, Any]]:
        """Other owners' annexes with this name, live first, if the caller may see them (administrators);
        [] for anyone else (the API refuses scope=all to them, and says nothing about others' names)."""
        try:
            everyone = self.list(everyone=True)
        except (Refused, ConfigError):
            return []
        found = [a for a in everyone if a.get("name") == name]
        return sorted(found, key=lambda a: a.get("state") not in LIVE_STATES)

    def resolve(self, name_or_id: str) -> str:
        """An id as given; a name becomes the id of your live annex with that name, else your newest."""
        if ANNEX_ID.match(name_or_id):
            return name_or_id
        matches = [a for a in self.list() if a.get("name") == name_or_id]
        if not matches:
            message = f"you have no annex named '{name_or_id}'; 'annex-client list' shows yours"
            others = self._others_named(name_or_id)
            if others:
                # Names are per owner; an administrator acts on another owner's annex by its id.
                ids = ", ".join(f"{a.get('id')} (owner {a.get('owner')})" for a in others[:3])
                message = (
                    f"you have no annex named '{name_or_id}', but other owners do: {ids}; names belong to "
                    f"their owner, so use the id, such as 'annex-client status {others[0].get('id')}'"
                )
            raise Refused(message, status=404, code="AnnexNotFound")
        live = [a for a in matches if a.get("state") in LIVE_STATES]
        return str((live or matches)[0]["id"])
