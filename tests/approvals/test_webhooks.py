"""Approval webhooks against a real HTTP receiver on 127.0.0.1: signed, retried with backoff,
recorded per attempt, redacted, sent once across workers, and never in the decision's way."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from conftest import Harness
from interlock._internal.approvals.service import ApprovalService
from interlock._internal.approvals.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    WebhookDispatcher,
    WebhookTarget,
    deliveries,
    signature,
    targets_from_settings,
    verify_signature,
)
from interlock.exceptions import ConfigError

SECRET = "whsec-0123456789abcdef"
EMAIL = {"ticket_id": "T-1001", "to": "customer@example.com", "subject": "Refund", "body": "Done."}
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver answering with the scripted status codes, then 200."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        time.sleep(self.delay_s)
        with self.lock:
            self.requests.append(Received(headers, body))
            return self.statuses.pop(0) if self.statuses else 200

    def events(self, event: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.headers[EVENT_HEADER] == event]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = state.handle(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/interlock"
    yield state
    server.shutdown()
    server.server_close()


def service(h: Harness, *urls: str, **options: Any) -> ApprovalService:
    options = {"backoff_s": 0.05, "poll_s": 0.05, **options}
    dispatcher = WebhookDispatcher(
        h.il.engine, [WebhookTarget(url=u, secret=SECRET) for u in urls], **options
    )
    return ApprovalService(h.il.engine, pipeline=h.il.pipeline, runtimes=h.il.runtime, dispatcher=dispatcher)


def wait_for(check: Callable[[], Any], *, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def operator(h: Harness, op_id: str) -> Any:
    record, _ = h.il.operators.create(op_id, roles=["approver"], workflows=None, actor="test")
    return record.principal()


def test_signed_events_carry_redacted_arguments_only(harness: Harness, receiver: Receiver) -> None:
    approvals = service(harness, receiver.url)
    approvals.start()
    try:
        run = harness.run()
        approval_id = harness.act(
            run, "emails.send", EMAIL, reasoning="reply to customer@example.com"
        ).approval_id
        # The worker finds approvals the pipeline created by itself; no call is needed.
        [requested] = wait_for(lambda: receiver.events("approval.requested"))
        assert verify_signature(SECRET, requested.body, requested.headers[SIGNATURE_HEADER])
        assert not verify_signature(
            "another-secret-0000", requested.body, requested.headers[SIGNATURE_HEADER]
        )
        assert not verify_signature(SECRET, requested.body + b" ", requested.headers[SIGNATURE_HEADER])
        assert requested.headers["Content-Type"] == "application/json"
        payload = requested.json
        assert payload["event"] == "approval.requested"
        assert payload["delivery"] == requested.headers[DELIVERY_HEADER]
        approval = payload["approval"]
        assert approval["id"] == approval_id
        assert approval["tool"] == "emails.send"
        assert approval["state"] == "pending"
        assert approval["risk"] == ["external"]
        assert approval["impact_if_accepted"]
        assert approval["arguments"]["to"] == "c***@example.com"
        assert b"customer@example.com" not in requested.body  # neither arguments nor reasoning leak it

        approvals.decide(approval_id, operator=operator(harness, "alice"), approve=True, comment="ok")
        [decided] = wait_for(lambda: receiver.events("approval.decided"))
        assert verify_signature(SECRET, decided.body, decided.headers[SIGNATURE_HEADER])
        body = decided.json["approval"]
        assert body["state"] == "approved"
        assert body["decided_by"] == ["alice"]
        assert body["comment"] == "ok"
        assert b"customer@example.com" not in decided.body
        rows = wait_for(
            lambda: (
                (r := deliveries(harness.il.engine, approval_id=approval_id))
                and all(d["status"] == "delivered" for d in r)
                and r
            )
        )
        assert sorted(d["event"] for d in rows) == ["approval.decided", "approval.requested"]
        assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in rows)
    finally:
        approvals.close()


def test_a_failed_delivery_is_retried_and_each_attempt_recorded(harness: Harness, receiver: Receiver) -> None:
    receiver.statuses = [500]
    approvals = service(harness, receiver.url)
    try:
        approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
        approvals.notify_requested(approval_id)
        approvals.notify_requested(approval_id)  # queued once however often it is asked
        [row] = wait_for(
            lambda: [
                d
                for d in deliveries(harness.il.engine, approval_id=approval_id)
                if d["status"] == "delivered"
            ]
        )
        assert row["attempts"] == 2
        assert row["last_status_code"] == 200
        assert row["last_error"] == "HTTP 500"
        assert len(receiver.requests) == 2
        first, second = receiver.requests
        assert first.body == second.body
        assert first.headers[DELIVERY_HEADER] == second.headers[DELIVERY_HEADER] == row["id"]
        assert verify_signature(SECRET, second.body, second.headers[SIGNATURE_HEADER])
    finally:
        approvals.close()


def test_delivery_gives_up_after_five_attempts(harness: Harness, receiver: Receiver) -> None:
    receiver.statuses = [503] * 10
    approvals = service(harness, receiver.url, backoff_s=0.01)
    try:
        approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
        approvals.notify_requested(approval_id)
        [row] = wait_for(
            lambda: [
                d for d in deliveries(harness.il.engine, approval_id=approval_id) if d["status"] == "failed"
            ]
        )
        assert row["attempts"] == 5
        assert row["last_status_code"] == 503
        time.sleep(0.2)
        assert len(receiver.requests) == 5
    finally:
        approvals.close()


def test_a_refusing_receiver_is_not_retried(harness: Harness, receiver: Receiver) -> None:
    receiver.statuses = [400]
    approvals = service(harness, receiver.url)
    try:
        approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
        approvals.notify_requested(approval_id)
        [row] = wait_for(lambda: [d for d in deliveries(harness.il.engine) if d["status"] == "failed"])
        assert row["attempts"] == 1
        assert row["last_status_code"] == 400
    finally:
        approvals.close()


def test_an_unreachable_receiver_is_retried_and_recorded(harness: Harness, receiver: Receiver) -> None:
    closed = receiver.url.rsplit(":", 1)[0] + ":9/"  # the discard port: nothing listens on it here
    approvals = service(harness, closed, backoff_s=0.01, max_attempts=2)
    try:
        approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
        approvals.notify_requested(approval_id)
        [row] = wait_for(lambda: [d for d in deliveries(harness.il.engine) if d["status"] == "failed"])
        assert row["attempts"] == 2
        assert row["last_status_code"] is None
        assert "Connect" in row["last_error"]
    finally:
        approvals.close()


def test_a_slow_receiver_never_delays_a_decision(harness: Harness, receiver: Receiver, desk: Any) -> None:
    receiver.delay_s = 1.5
    approvals = service(harness, receiver.url)
    approvals.start()
    try:
        approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
        approvals.notify_requested(approval_id)
        wait_for(
            lambda: receiver.delay_s and deliveries(harness.il.engine)[0]["next_attempt_at"] > time.time()
        )
        started = time.monotonic()
        view = approvals.decide(approval_id, operator=operator(harness, "alice"), approve=True)
        assert time.monotonic() - started < 1.0
        assert view.execution == "done"
        assert desk.refunds_total() == 120
        wait_for(lambda: len(receiver.events("approval.decided")) == 1, timeout_s=20)
    finally:
        approvals.close()


def test_two_workers_send_each_delivery_once(harness: Harness, receiver: Receiver) -> None:
    first, second = service(harness, receiver.url), service(harness, receiver.url)
    first.start()
    second.start()
    try:
        run = harness.run()
        ids = [
            harness.act(run, "emails.send", {**EMAIL, "subject": f"Update {i}"}).approval_id for i in range(5)
        ]
        wait_for(
            lambda: (
                all(d["status"] == "delivered" for d in deliveries(harness.il.engine))
                and len(deliveries(harness.il.engine)) == 5
            )
        )
        time.sleep(0.3)
        got = sorted(r.json["approval"]["id"] for r in receiver.events("approval.requested"))
        assert got == sorted(ids)
    finally:
        first.close()
        second.close()


def test_without_targets_nothing_is_queued(harness: Harness) -> None:
    approvals = ApprovalService(harness.il.engine, pipeline=harness.il.pipeline, runtimes=harness.il.runtime)
    approval_id = harness.act(harness.run(), "payments.refund", REFUND).approval_id
    approvals.notify_requested(approval_id)
    assert approvals.notify_pending() == 0
    approvals.decide(approval_id, operator=operator(harness, "alice"), approve=False)
    assert deliveries(harness.il.engine) == []
    assert approvals.webhooks.run_once() == 0


def test_only_http_urls_with_a_real_secret() -> None:
    for url in (
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com",
        "example.com/hook",
        "http://",
    ):
        with pytest.raises(ConfigError):
            WebhookTarget(url=url, secret=SECRET)
    with pytest.raises(ConfigError):
        WebhookTarget(url="https://user:pw@example.com/hook", secret=SECRET)
    with pytest.raises(ConfigError):
        WebhookTarget(url="https://example.com/hook", secret="short")
    target = WebhookTarget(url="https://example.com/hook", secret=SECRET)
    assert SECRET not in repr(target)


def test_targets_from_settings() -> None:
    class Hook:
        url = "https://example.com/a"
        secret = SecretStr(SECRET)

    class WithHooks:
        webhooks = [Hook(), {"url": "http://127.0.0.1:8080/b", "secret": SECRET}]

    found = targets_from_settings(WithHooks())
    assert [(t.url, t.secret) for t in found] == [
        ("https://example.com/a", SECRET),
        ("http://127.0.0.1:8080/b", SECRET),
    ]
    assert targets_from_settings(object()) == []

    class Broken:
        webhooks = [{"url": "https://example.com"}]

    with pytest.raises(ConfigError):
        targets_from_settings(Broken())


def test_signature_format_and_replay_window() -> None:
    body = b'{"event":"approval.requested"}'
    header = signature(SECRET, body, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert len(header.split("v1=")[1]) == 64
    assert verify_signature(SECRET, body, header, now=1_700_000_100)
    assert not verify_signature(SECRET, body, header, now=1_700_000_000 + 301)
    assert not verify_signature(SECRET, body, "garbage")
    assert not verify_signature(SECRET, body, "t=1700000000", now=1_700_000_000)
