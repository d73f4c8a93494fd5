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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading, transaction
from interlock.exceptions import ConfigError

log = logging.getLogger("interlock.webhooks")

SIGNATURE_HEADER = "Interlock-Signature"
EVENT_HEADER = "Interlock-Event"
DELIVERY_HEADER = "Interlock-Delivery"
EVENTS: tuple[str, ...] = ("approval.requested", "approval.decided")
_RETRYABLE = frozenset({408, 425, 429})
_MAX_ERROR_CHARS = 500


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


class WebhookDispatcher:
    """Queues webhook deliveries in the database and sends them from one background thread.

    Several processes may share a database: each delivery attempt is claimed with a conditional
    UPDATE first, so one process sends it. ``run_once`` sends whatever is due in the caller's
    thread (for tests and one-shot commands).
    """

    def __init__(
        self,
        engine: Engine,
        targets: Sequence[WebhookTarget],
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        timeout_s: float = 10.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError("webhook max_attempts must be at least 1")
        self.engine = engine
        self.targets = {target.url: target for target in targets}
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._transport = transport
        self._client: httpx.Client | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._before_poll: list[Callable[[], object]] = []

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def on_poll(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` in the worker before each round (to find events to announce)."""
        self._before_poll.append(hook)

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

    def wake(self) -> None:
        """Tell the worker something was queued (after the queueing transaction committed)."""
        if self.enabled:
            self.start()
            self._wake.set()

    # ---- the worker ------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            # Closed is final: an owner that shut down must not find a worker running again.
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop.clear()
            # A daemon: a process that forgets close() still exits; queued rows wait for the next start.
            self._thread = threading.Thread(target=self._loop, name="interlock-webhooks", daemon=True)
            self._thread.start()

    def close(self, *, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout=timeout_s)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for hook in self._before_poll:
                    hook()
                self.run_once()
                delay = self._next_due_in()
            except Exception:  # the worker must outlive a database hiccup
                log.exception("webhook round failed")
                delay = self.poll_s
            self._wake.wait(delay)
            self._wake.clear()

    def _next_due_in(self) -> float:
        with reading(self.engine) as conn:
            due = conn.execute(
                select(t.webhook_deliveries.c.next_attempt_at)
                .where(t.webhook_deliveries.c.status == "pending")
                .order_by(t.webhook_deliveries.c.next_attempt_at)
                .limit(1)
            ).scalar()
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.01, float(due) - self._clock()))

    def run_once(self, *, limit: int = 50) -> int:
        """Attempt every delivery that is due now; returns how many attempts were made."""
        if not self.enabled:
            return 0
        now = self._clock()
        with reading(self.engine) as conn:
            rows = (
                conn.execute(
                    select(t.webhook_deliveries)
                    .where(
                        t.webhook_deliveries.c.status == "pending",
                        t.webhook_deliveries.c.next_attempt_at <= now,
                    )
                    .order_by(t.webhook_deliveries.c.next_attempt_at)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        attempted = 0
        for row in rows:
            if self._claim(row["id"], attempts=int(row["attempts"]), now=now):
                self._attempt(dict(row))
                attempted += 1
        return attempted

    def _claim(self, ident: str, *, attempts: int, now: float) -> bool:
        # Push next_attempt_at past the attempt's duration: other workers skip the row meanwhile,
        # and if this process dies mid-attempt the row becomes due again afterwards. Matching the
        # attempt count too means a worker holding an older read of the row never claims it.
        lease = now + self.timeout_s + 30
        with transaction(self.engine) as conn:
            claimed = conn.execute(
                update(t.webhook_deliveries)
                .where(
                    t.webhook_deliveries.c.id == ident,
                    t.webhook_deliveries.c.status == "pending",
                    t.webhook_deliveries.c.attempts == attempts,
                    t.webhook_deliveries.c.next_attempt_at <= now,
                )
                .values(next_attempt_at=lease)
            ).rowcount
        return claimed == 1

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.timeout_s, follow_redirects=False, transport=self._transport
            )
        return self._client

    def _attempt(self, row: dict[str, Any]) -> None:
        attempt = int(row["attempts"]) + 1
        target = self.targets.get(row["url"])
        status_code: int | None = None
        error: str | None = None
        retry = False
        if target is None:
            error = "the target is no longer configured"
        else:
            body = body_bytes(row["payload"])
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "interlock-webhooks",
                SIGNATURE_HEADER: signature(target.secret, body, timestamp=int(self._clock())),
                EVENT_HEADER: row["event"],
                DELIVERY_HEADER: row["id"],
            }
            try:
                response = self._http().post(target.url, content=body, headers=headers)
                status_code = response.status_code
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
                    retry = status_code >= 500 or status_code in _RETRYABLE
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
                retry = True
        now = self._clock()
        values: dict[str, Any] = {"attempts": attempt, "last_status_code": status_code}
        if error is None:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
        else:
            values["last_error"] = error
            if retry and attempt < self.max_attempts:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                values.update(next_attempt_at=now + delay)
            else:
                values.update(status="failed", next_attempt_at=None)
                log.warning(
                    "webhook %s to %s failed after %d attempts: %s", row["id"], row["url"], attempt, error
                )
        with transaction(self.engine) as conn:
            conn.execute(
                update(t.webhook_deliveries).where(t.webhook_deliveries.c.id == row["id"]).values(**values)
            )


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
