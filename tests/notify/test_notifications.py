"""Notifications and tickets on SQLite and PostgreSQL, to receivers on 127.0.0.1: every event a
person must act on reaches each target once, with several replicas, retries recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import SUPPORT_TRIAGE, Harness
from interlock import Interlock, Settings
from interlock._internal.approvals.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify_signature
from interlock._internal.audit.chain import append_event
from interlock._internal.notify.targets import Target
from interlock._internal.store.engine import transaction
from interlock.exceptions import ConfigError

SECRET = "ntfsec-0123456789abcdef"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
PUBLIC = "https://interlock.example.test"


@dataclass
class Receiver:
    """An HTTP receiver on loopback answering with scripted (status, body) pairs, then 200."""

    answers: list[tuple[int, bytes]] = field(default_factory=list)
    default: tuple[int, bytes] = (200, b"ok")
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self.lock:
            self.requests.append((path, headers, body))
            return self.answers.pop(0) if self.answers else self.default

    def bodies(self) -> list[Any]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made: dict[str, Receiver] = {}
    servers = []
    for name in ("webhook", "slack", "ticket"):
        state = Receiver()

        class Handler(BaseHTTPRequestHandler):
            receiver = state

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = self.receiver.handle(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = _any  # noqa: N815
            do_PUT = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
        made[name] = state
        servers.append(server)
    yield made
    for server in servers:
        server.shutdown()
        server.server_close()


def settings_for(db_url: str, receivers: dict[str, Receiver], **extra: Any) -> dict[str, Any]:
    return {
        "server": {"public_url": PUBLIC},
        "notifications": {
            "backoff_s": 0.05,
            "targets": [
                {"name": "hooks", "kind": "webhook", "url": receivers["webhook"].url, "secret": SECRET},
                {"name": "chat", "kind": "slack", "url": receivers["slack"].url},
                {
                    "name": "jira",
                    "kind": "ticket",
                    "url": receivers["ticket"].url,
                    "token": "jira-api-token",
                    "events": ["approval.requested", "run.escalated", "action.outcome_unknown"],
                    "body": {
                        "fields": {
                            "project": {"key": "OPS"},
                            "summary": "{title}",
                            "description": "{text}\n{link}",
                            "issuetype": {"name": "Task"},
                            "labels": ["interlock", "{severity}"],
                        }
                    },
                },
            ],
            **extra,
        },
    }


def wait_for(check: Callable[[], Any], *, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def drain(*interlocks: Interlock) -> None:
    """Scan and deliver until nothing is due (retries included)."""

    def settled() -> bool:
        for il in interlocks:
            il.notifications.run_once()
        rows = interlocks[0].notifications.deliveries()
        return bool(rows) and all(r["status"] != "pending" for r in rows)

    wait_for(settled)


def test_each_event_reaches_each_target_once(db_url: str, receivers: dict[str, Receiver]) -> None:
    h = Harness(db_url, **settings_for(db_url, receivers))
    try:
        notifier = h.il.notifications
        notifier.prime()
        receivers["ticket"].answers = [(503, b"busy")]
        receivers["ticket"].default = (201, b'{"id": "10001", "key": "OPS-7"}')
        run = h.run()
        approval = h.act(run, "payments.refund", REFUND)
        assert approval.status == "pending_approval"
        escalated = h.act(run, "tickets.get", {"ticket_id": "T-1001"}, confidence=0.2)
        assert escalated.status == "escalated"
        h.il.pause("workflow", h.workflow, actor="operator:ops", reason="incident 42")
        h.il.resume("workflow", h.workflow, actor="operator:ops")
        other = h.run("reporter")
        h.il.report_model_call(
            h.tokens["reporter"], other, model="m", input_tokens=1, output_tokens=1, cost_usd=1.7
        )
        # Emitted elsewhere (the lease reaper, the circuit breaker): the kind alone drives notices.
        with transaction(h.il.engine) as conn:
            append_event(
                conn,
                kind="action.outcome_unknown",
                actor="interlock",
                workflow=h.workflow,
                run_id=run,
                data={"tool": "payments.refund", "step": "stp_x"},
            )
            append_event(conn, kind="breaker.opened", actor="interlock", data={"upstream": "help-desk"})
        drain(h.il)

        kinds = [
            "approval.requested",
            "run.escalated",
            "workflow.paused",
            "workflow.resumed",
            "budget.nearly_spent",
            "action.outcome_unknown",
            "breaker.opened",
        ]
        hooks = receivers["webhook"]
        assert sorted(b["event"] for b in hooks.bodies()) == sorted(kinds)
        for _, headers, body in hooks.requests:
            assert verify_signature(SECRET, body, headers[SIGNATURE_HEADER])
        by_kind = {b["event"]: b for b in hooks.bodies()}
        assert by_kind["approval.requested"]["link"] == f"{PUBLIC}/ui/approvals/{approval.approval_id}"
        assert by_kind["run.escalated"]["link"].startswith(f"{PUBLIC}/ui/handoffs/hof_")
        assert by_kind["budget.nearly_spent"]["data"]["scope"] == "run"
        assert "incident 42" in by_kind["workflow.paused"]["title"]

        chat = receivers["slack"].bodies()
        assert len(chat) == len(kinds)
        first = next(c for c in chat if c["text"].startswith("Approval needed"))
        assert "Approval needed: payments.refund" in first["text"]
        button = first["blocks"][-1]["elements"][0]
        assert button["url"] == f"{PUBLIC}/ui/approvals/{approval.approval_id}"

        tickets = receivers["ticket"]
        ticket_bodies = tickets.bodies()
        # Three events want tickets; the first attempt was answered 503 and retried.
        assert len(ticket_bodies) == 4
        assert len({json.dumps(b, sort_keys=True) for b in ticket_bodies}) == 3
        summaries = sorted(b["fields"]["summary"].split(":")[0] for b in ticket_bodies)
        assert summaries.count("Approval needed") >= 1
        assert all(b["fields"]["project"] == {"key": "OPS"} for b in ticket_bodies)
        assert tickets.requests[0][1]["Authorization"] == "Bearer jira-api-token"
        rows = {(r["target"], r["event_kind"]): r for r in notifier.deliveries()}
        assert len(rows) == 2 * len(kinds) + 3
        jira = [r for (target, _), r in rows.items() if target == "jira"]
        assert sorted(r["attempts"] for r in jira) == [1, 1, 2]
        retried = next(r for r in jira if r["attempts"] == 2)
        assert retried["status"] == "delivered"
        assert {r["response"] for r in jira} == {"OPS-7"}
        assert retried["last_status_code"] == 201
        assert all(r["status"] == "delivered" for r in rows.values())
        # Nothing more is sent on later rounds.
        before = sum(len(r.requests) for r in receivers.values())
        notifier.run_once()
        assert sum(len(r.requests) for r in receivers.values()) == before
    finally:
        h.close()


def test_several_replicas_deliver_each_notice_once(db_url: str, receivers: dict[str, Receiver]) -> None:
    config = settings_for(db_url, receivers)
    h = Harness(db_url, **config)
    replicas = [Interlock(Settings(database={"url": db_url}, **config)) for _ in range(2)]  # type: ignore[arg-type]
    try:
        h.il.notifications.prime()
        for il in replicas:
            il.notifications.poll_s = 0.05
            il.notifications.start()
        h.il.notifications.poll_s = 0.05
        h.il.notifications.start()
        runs = [h.run() for _ in range(3)]
        approvals = [
            h.act(run, "payments.refund", {**REFUND, "ticket_id": f"T-10{i}"}) for i, run in enumerate(runs)
        ]
        assert all(a.status == "pending_approval" for a in approvals)
        wait_for(lambda: len(receivers["webhook"].requests) >= 3 and len(receivers["ticket"].requests) >= 3)
        drain(h.il, *replicas)
        time.sleep(0.5)  # let any duplicate in flight land before counting
        deliveries = [r[1][DELIVERY_HEADER] for r in receivers["webhook"].requests]
        assert len(deliveries) == 3
        assert len(set(deliveries)) == 3
        assert len(receivers["slack"].requests) == 3
        assert len(receivers["ticket"].requests) == 3
    finally:
        for il in replicas:
            il.close()
        h.close()


def test_notifications_start_from_the_end_of_an_existing_log(
    db_url: str, receivers: dict[str, Receiver]
) -> None:
    h = Harness(db_url, **settings_for(db_url, receivers))
    try:
        run = h.run()
        h.act(run, "payments.refund", REFUND)  # before notifications were ever enabled
        h.il.notifications.run_once()
        h.act(run, "payments.refund", {**REFUND, "ticket_id": "T-1004"})
        drain(h.il)
        assert len(receivers["webhook"].requests) == 1
    finally:
        h.close()


def test_targets_are_checked() -> None:
    with pytest.raises(ConfigError):
        Target(name="x", kind="webhook", url="http://127.0.0.1/x", events=frozenset(), secret="short")
    with pytest.raises(ConfigError):
        Target(name="x", kind="slack", url="ftp://example.test/x", events=frozenset())
    with pytest.raises(ConfigError):
        Target(name="x", kind="slack", url="http://127.0.0.1/x", events=frozenset({"approval.requestd"}))


def test_settings_accept_targets_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "INTERLOCK_NOTIFICATIONS__TARGETS",
        json.dumps([{"name": "chat", "kind": "slack", "url": "https://hooks.slack.example/T1/B2/c3"}]),
    )
    settings = Settings()
    assert settings.notifications.targets[0].kind == "slack"
    assert SUPPORT_TRIAGE.is_file()


def test_operators_read_what_was_sent_over_rest_and_the_cli(
    db_url: str, receivers: dict[str, Receiver]
) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from interlock._internal.cli import main
    from interlock._internal.server import create_app

    h = Harness(db_url, **settings_for(db_url, receivers))
    try:
        h.il.notifications.prime()
        receivers["ticket"].default = (201, b'{"id": "10001", "key": "OPS-9"}')
        receivers["slack"].default = (400, b"invalid_payload")  # not retried: recorded as failed
        run = h.run()
        assert h.act(run, "payments.refund", REFUND).status == "pending_approval"
        with transaction(h.il.engine) as conn:
            append_event(conn, kind="breaker.opened", actor="interlock", data={"upstream": "help-desk"})
        drain(h.il)
        ops = h.il.operators
        _, mine = ops.create("ana", roles=["approver"], workflows=[h.workflow], actor="test")
        _, other = ops.create("otto", roles=["owner"], workflows=["billing"], actor="test")
        http = TestClient(create_app(interlock=h.il))

        def listed(token: str, **query: Any) -> Any:
            r = http.get("/v1/notifications", params=query, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            return r.json()

        everything = listed(mine)
        assert {(d["event"], d["target"]) for d in everything} == {
            (event, target)
            for event in ("approval.requested", "breaker.opened")
            for target in ("hooks", "chat", "jira")
            if not (target == "jira" and event == "breaker.opened")
        }
        assert everything[0]["event"] == "breaker.opened"  # newest first
        [ticket] = listed(mine, target="jira")
        assert (ticket["status"], ticket["reference"], ticket["run_id"]) == ("delivered", "OPS-9", run)
        assert ticket["workflow"] == h.workflow
        failed = listed(mine, status="failed")
        assert {d["target"] for d in failed} == {"chat"}
        assert all(d["last_status_code"] == 400 and d["last_error"] == "HTTP 400" for d in failed)
        assert [d["event"] for d in listed(mine, run=run, target="hooks")] == ["approval.requested"]
        # Another workflow's operator sees what concerns everyone, not this workflow's notices.
        assert {d["event"] for d in listed(other)} == {"breaker.opened"}
        bad = http.get(
            "/v1/notifications", params={"status": "lost"}, headers={"Authorization": f"Bearer {mine}"}
        )
        assert bad.status_code == 422
        assert http.get("/v1/notifications").status_code == 401

        runner = CliRunner()
        main._register()
        cli = main.app
        out = runner.invoke(
            cli, ["notifications", "list", "--db", db_url, "--as", "otto", "--target", "hooks", "--json"]
        )
        assert out.exit_code == 0, out.stdout + out.stderr
        assert [d["event"] for d in json.loads(out.stdout)] == ["breaker.opened"]
        table = runner.invoke(cli, ["notifications", "list", "--db", db_url, "--status", "delivered"])
        assert table.exit_code == 0, table.stdout
        assert "OPS-9" in table.stdout
        wrong = runner.invoke(cli, ["notifications", "list", "--db", db_url, "--status", "lost"])
        assert wrong.exit_code != 0
        assert "status must be one of pending, delivered, failed" in wrong.stdout + wrong.stderr
    finally:
        h.close()
