"""Webhooks for approvals: ``approval.requested`` and ``approval.decided``, signed, retried, recorded.

A notification is a row in ``webhook_deliveries`` first, written in the same transaction as the
change it announces, so nothing is announced that did not happen and nothing that happened is
forgotten by a crash. A background thread then POSTs the JSON body to each configured URL with::

    Interlock-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the target's secret>
    Interlock-Event: approval.requested
    Interlock-Delivery: <delivery id, stable across retries: deduplicate on it>

Failures (network errors, 408, 425, 429 and 5xx) are retried with exponential backoff, at most
``max_attempts`` times in all; any other answer ends the series. Each attempt updates the row
(attempts, last status code, last error). The decision path only inserts rows: it never waits
for a receiver. Bodies carry only redacted arguments, never the exact payload.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from interlock._internal.notify.outbox import Outbox, Sent
from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading
from interlock.exceptions import ConfigError

SIGNATURE_HEADER = "Interlock-Signature"
EVENT_HEADER = "Interlock-Event"
DELIVERY_HEADER = "Interlock-Delivery"
EVENTS: tuple[str, ...] = ("approval.requested", "approval.decided")


@dataclass(frozen=True)
class WebhookTarget:
    """A receiver an operator configured. Only ``http`` and ``https`` URLs are accepted."""

    url: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook url must be an http(s) URL with a host, not {self.url!r}")
        if parts.username or parts.password:
            # Credentials in a URL end up in logs and in the deliveries table; use the secret.
            raise ConfigError("webhook url must not carry credentials; the secret signs each request")
        if len(self.secret) < 16:
            raise ConfigError(f"webhook secret for {self.url} must be at least 16 characters")


def targets_from_settings(settings: object) -> list[WebhookTarget]:
    """The targets in ``settings.webhooks`` (a list of objects or mappings with ``url`` and
    ``secret``), or none when the settings have no such entry."""
    found: list[WebhookTarget] = []
    for item in getattr(settings, "webhooks", None) or ():
        url: object = item.get("url") if isinstance(item, dict) else getattr(item, "url", None)
        secret: object = item.get("secret") if isinstance(item, dict) else getattr(item, "secret", None)
        reveal = getattr(secret, "get_secret_value", None)  # pydantic SecretStr
        if callable(reveal):
            secret = reveal()
        if not isinstance(url, str) or not isinstance(secret, str):
            raise ConfigError("each webhook needs a url and a secret")
        found.append(WebhookTarget(url=url, secret=secret))
    return found


def signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The ``Interlock-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: str, body: bytes, header: str, *, tolerance_s: float = 300, now: float | None = None
) -> bool:
    """What a receiver checks: a valid ``v1`` for this body, signed within ``tolerance_s``
    (which bounds replays of a captured request)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = signature(secret, body, timestamp=timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def delivery_id(event: str, approval_id: str, url: str) -> str:
    # Deterministic, so replicas that notice the same event at once insert one row between them.
    digest = hashlib.sha256(f"{event}\n{approval_id}\n{url}".encode()).hexdigest()
    return f"whd_{digest[:32]}"


def body_bytes(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WebhookDispatcher(Outbox):
    """Queues webhook deliveries in the database and sends them from one background thread.

    Several processes may share a database: each delivery attempt is claimed first, so one
    process sends it (:mod:`interlock._internal.notify.outbox`). ``run_once`` sends whatever is
    due in the caller's thread (for tests and one-shot commands).
    """

    table = t.webhook_deliveries
    kind = "webhook"

    def __init__(self, engine: Engine, targets: Sequence[WebhookTarget], **options: Any) -> None:
        super().__init__(engine, **options)
        self.targets = {target.url: target for target in targets}
        self._before_poll: list[Callable[[], object]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def on_poll(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` in the worker before each round (to find events to announce)."""
        self._before_poll.append(hook)

    def _before_round(self) -> None:
        for hook in self._before_poll:
            hook()

    # ---- queueing (inside the caller's transaction) -----------------------------------------

    def enqueue(self, conn: Connection, *, event: str, approval_id: str, approval: dict[str, Any]) -> int:
        """Queue ``event`` about one approval for every target; returns how many rows were new."""
        if event not in EVENTS:
            raise ValueError(f"unknown webhook event {event!r}")
        now = self._clock()
        added = 0
        for url in self.targets:
            ident = delivery_id(event, approval_id, url)
            payload = {"event": event, "delivery": ident, "created_at": now, "approval": approval}
            added += insert_ignore(
                conn,
                t.webhook_deliveries,
                {
                    "id": ident,
                    "event": event,
                    "approval_id": approval_id,
                    "url": url,
                    "payload": payload,
                    "status": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                },
            )
        return added

    # ---- sending one -------------------------------------------------------------------------

    def _send(self, row: dict[str, Any]) -> Sent:
        target = self.targets.get(row["url"])
        if target is None:
            return Sent(error="the target is no longer configured")
        body = body_bytes(row["payload"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "interlock-webhooks",
            SIGNATURE_HEADER: signature(target.secret, body, timestamp=int(self._clock())),
            EVENT_HEADER: row["event"],
            DELIVERY_HEADER: row["id"],
        }
        return self._post("POST", target.url, content=body, headers=headers)

    def _describe(self, row: dict[str, Any]) -> str:
        return f"{row['id']} to {row['url']}"


def deliveries(engine: Engine, *, approval_id: str | None = None) -> list[dict[str, Any]]:
    """Delivery rows, oldest first (for operators and tests)."""
    query = select(t.webhook_deliveries).order_by(
        t.webhook_deliveries.c.created_at, t.webhook_deliveries.c.id
    )
    if approval_id is not None:
        query = query.where(t.webhook_deliveries.c.approval_id == approval_id)
    with reading(engine) as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


__all__ = [
    "DELIVERY_HEADER",
    "EVENTS",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "WebhookDispatcher",
    "WebhookTarget",
    "body_bytes",
    "deliveries",
    "delivery_id",
    "signature",
    "targets_from_settings",
    "verify_signature",
]
