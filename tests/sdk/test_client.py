"""The SDK clients against the real server over 127.0.0.1, on the reference workflow."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import Harness
from interlock import (
    ActionResult,
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    InterlockError,
    NotFound,
    StorageError,
    UpstreamError,
)
from interlock._internal.server import create_app
from servers import LiveServer


class Served:
    def __init__(self, harness: Harness, url: str, app: Any) -> None:
        self.h = harness
        self.url = url
        self.app = app

    def client(self, agent: str = "triage-bot", **kw: Any) -> Client:
        return Client(self.url, client_id=agent, client_secret=self.h.secrets[agent], **kw)

    def aclient(self, agent: str = "triage-bot", **kw: Any) -> AsyncClient:
        return AsyncClient(self.url, client_id=agent, client_secret=self.h.secrets[agent], **kw)

    def has_route(self, method: str, path: str) -> bool:
        return method.lower() in self.app.openapi()["paths"].get(path, {})

    def approve(self, approval_id: str, *, reject: bool = False, comment: str | None = None) -> None:
        """A person decides through the approvals API, as the console would."""
        _, token = self.h.il.operators.create(
            f"approver-{approval_id[-6:]}", roles=["approver"], workflows=None, actor="test"
        )
        verb = "reject" if reject else "approve"
        r = httpx.post(
            f"{self.url}/v1/approvals/{approval_id}/{verb}",
            headers={"Authorization": f"Bearer {token}"},
            json={"comment": comment},
            timeout=30,
        )
        assert r.status_code == 200, r.text


def serve(harness: Harness) -> Iterator[Served]:
    app = create_app(interlock=harness.il)
    with LiveServer(app) as url:
        yield Served(harness, url, app)
    harness.close()


@pytest.fixture
def served(db_url: str) -> Iterator[Served]:
    yield from serve(Harness(db_url))


@pytest.fixture
def served_sqlite(sqlite_url: str) -> Iterator[Served]:
    yield from serve(Harness(sqlite_url))


def refund(amount: float, ticket: str = "T-1002") -> dict[str, Any]:
    return {"ticket_id": ticket, "amount": amount, "currency": "USD", "reason": "late delivery"}


# ---- the agent's API --------------------------------------------------------------------------------


def test_every_decision_is_a_result(served: Served, desk: Any) -> None:
    with served.client() as il:
        run = il.start_run(trigger={"ticket": "T-1001"})
        assert run.state == "running"
        assert run.agent_id == "triage-bot"

        got = il.act(run.id, "tickets.get", {"ticket_id": "T-1001"})
        assert got.status == "executed"
        assert got.result["ticket_id"] == "T-1001"

        small = il.act(run.id, "payments.refund", refund(30), reasoning="late delivery, policy 4.2")
        assert small.executed
        assert small.result["amount"] == 30

        delete = il.act(run.id, "customers.delete", {"customer_id": "C-1001"})
        assert delete.status == "denied"
        assert delete.decision.decision == "deny"
        assert "forbid:no-deletes" in delete.decision.policy_ids

        invalid = il.act(run.id, "tickets.get", {"ticket_id": "nope"})
        assert invalid.status == "invalid"
        assert any(r.field for r in invalid.decision.reasons)

        big = il.act(run.id, "payments.refund", refund(120))
        assert big.status == "pending_approval"
        assert big.approval_id

        view = il.get_run(run.id)
        assert [s.status for s in view.steps_detail] == [
            "executed",
            "executed",
            "denied",
            "invalid",
            "pending_approval",
        ]
        names = {t.name for t in il.tools()}
        assert {"tickets.get", "payments.refund"} <= names
        assert "customers.delete" not in names
    assert desk.refunds_total() == 30


def test_errors_before_a_decision_raise(served_sqlite: Served) -> None:
    with served_sqlite.client() as il:
        with pytest.raises(NotFound) as unknown:
            il.act("run_missing", "tickets.get", {"ticket_id": "T-1001"})
        assert unknown.value.code == "unknown_run"
        run = il.start_run()
        il.act(run.id, "tickets.get", {"ticket_id": "T-1001"}, idempotency_key="k-1")
        with pytest.raises(ConflictError) as reused:
            il.act(run.id, "tickets.get", {"ticket_id": "T-1002"}, idempotency_key="k-1")
        assert reused.value.code == "idempotency_key_reused"
    bad = Client(served_sqlite.url, client_id="triage-bot", client_secret="wrong")
    with bad, pytest.raises(AuthenticationError) as refused:
        bad.start_run()
    assert refused.value.code == "invalid_client"


def test_a_closed_port_is_an_interlock_error(served_sqlite: Served) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    il = Client(f"http://127.0.0.1:{port}", client_id="x", client_secret="y", retries=1)
    with il, pytest.raises(InterlockError) as err:
        il.start_run()
    assert err.value.code == "server_unreachable"
    assert isinstance(err.value.__cause__, httpx.ConnectError)


# ---- tokens -----------------------------------------------------------------------------------------


class Counting(httpx.HTTPTransport):
    """The real transport, counting requests by path, optionally losing one response."""

    def __init__(self, *, lose_first_action_response: bool = False) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.lose = lose_first_action_response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        response = super().handle_request(request)
        if self.lose and request.url.path.endswith("/actions"):
            self.lose = False
            response.read()
            response.close()
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


def test_tokens_are_fetched_once_renewed_before_expiry_and_after_token_expired(served_sqlite: Served) -> None:
    transport = Counting()
    with served_sqlite.client(transport=transport) as il:
        run = il.start_run()
        il.get_run(run.id)
        assert transport.paths.count("/oauth/token") == 1

        il._tokens.renew_at = time.monotonic()  # the token is about to expire: renewed before use
        il.get_run(run.id)
        assert transport.paths.count("/oauth/token") == 2

        # The server's clock jumps past the token's expiry: it answers 401 token_expired once.
        tokens = served_sqlite.h.il.tokens
        real_clock = tokens._clock
        tokens._clock = lambda: real_clock() + 3600
        try:
            assert il.act(run.id, "tickets.get", {"ticket_id": "T-1001"}).executed
        finally:
            tokens._clock = real_clock
        assert transport.paths.count("/oauth/token") == 3
        assert transport.paths[-3:] == [
            f"/v1/runs/{run.id}/actions",
            "/oauth/token",
            f"/v1/runs/{run.id}/actions",
        ]


def test_a_lost_response_is_retried_with_the_same_generated_key(served_sqlite: Served, desk: Any) -> None:
    transport = Counting(lose_first_action_response=True)
    with served_sqlite.client(transport=transport) as il:
        run = il.start_run()
        result = il.act(run.id, "payments.refund", refund(30))
    assert result.executed
    assert result.replayed
    assert transport.paths.count(f"/v1/runs/{run.id}/actions") == 2
    assert desk.refunds_total() == 30  # refunded once


# ---- approvals ----------------------------------------------------------------------------------------


def test_wait_for_approval_long_polls_until_the_action_ran(served_sqlite: Served, desk: Any) -> None:
    with served_sqlite.client() as il:
        run = il.start_run()
        pending = il.act(run.id, "payments.refund", refund(120), idempotency_key="refund-120")
        assert pending.approval_id is not None
        waiting = il.wait_for_approval(pending.approval_id, timeout_s=0)
        assert waiting.state == "pending"
        assert waiting.outcome is None

        timer = threading.Timer(0.5, served_sqlite.approve, args=(pending.approval_id,))
        timer.start()
        started = time.monotonic()
        view = il.wait_for_approval(pending.approval_id, timeout_s=20)
        timer.join()
        assert time.monotonic() - started < 15
        assert view.state == "approved"
        assert view.execution == "done"
        assert view.outcome is not None
        assert view.outcome.status == "executed"

        again = il.act(run.id, "payments.refund", refund(120), idempotency_key="refund-120")
        assert again.executed
        assert again.replayed
    assert desk.refunds_total() == 120


def test_a_rejection_reaches_the_waiting_agent(served_sqlite: Served, desk: Any) -> None:
    with served_sqlite.client() as il:
        run = il.start_run()
        pending = il.act(run.id, "payments.refund", refund(200))
        assert pending.approval_id is not None
        served_sqlite.approve(pending.approval_id, reject=True, comment="refund the 120 order instead")
        view = il.wait_for_approval(pending.approval_id, timeout_s=5)
    assert view.state == "rejected"
    assert view.comment == "refund the 120 order instead"
    assert desk.refunds_total() == 0


# ---- run lifecycle routes ----------------------------------------------


def test_finish_run_and_report_model_call(served_sqlite: Served) -> None:
    assert served_sqlite.has_route("POST", "/v1/runs/{run_id}/finish")
    assert served_sqlite.has_route("POST", "/v1/runs/{run_id}/model-calls")
    with served_sqlite.client() as il:
        run = il.start_run()
        usage = il.report_model_call(
            run.id, model="gpt-4o-mini", input_tokens=1200, output_tokens=300, cost_usd=0.002
        )
        assert usage.cost_usd == pytest.approx(0.002)
        assert usage.tokens == 1500
        ended = il.finish_run(run.id, state="completed")
        assert ended.state == "completed"


# ---- async -----------------------------------------------------------------------------------------------


def test_async_client_speaks_the_same_api(served_sqlite: Served, desk: Any) -> None:
    async def main() -> tuple[ActionResult, ActionResult, ActionResult, list[str]]:
        async with served_sqlite.aclient() as il:
            run = await il.start_run(trigger={"ticket": "T-1003"})
            got, deleted, big = await asyncio.gather(
                il.act(run.id, "tickets.get", {"ticket_id": "T-1003"}),
                il.act(run.id, "customers.delete", {"customer_id": "C-1003"}),
                il.act(run.id, "payments.refund", refund(120, "T-1003")),
            )
            view = await il.get_run(run.id)
            assert big.approval_id is not None
            status = await il.wait_for_approval(big.approval_id, timeout_s=0)
            assert status.state == "pending"
            tools = [t.name for t in await il.tools()]
            assert len(view.steps_detail) == 3
            return got, deleted, big, tools

    got, deleted, big, tools = asyncio.run(main())
    assert got.executed
    assert deleted.status == "denied"
    assert big.status == "pending_approval"
    assert "tickets.get" in tools
    assert desk.refunds_total() == 0


# ---- error mapping of server-side failures (no server needed) ----------------------------------------------


def _mock(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 900})
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (
            500,
            {"error": {"code": "internal_error", "message": "internal error"}},
            InterlockError,
            "internal_error",
        ),
        (503, {"error": {"code": "storage_error", "message": "db"}}, StorageError, "storage_error"),
        (
            502,
            {"error": {"code": "upstream_error", "message": "tool failed"}},
            UpstreamError,
            "upstream_error",
        ),
        (
            401,
            {"error": {"code": "agent_revoked", "message": "revoked"}},
            AuthenticationError,
            "agent_revoked",
        ),
    ],
)
def test_server_failures_raise_mapped_errors(
    status: int, body: Any, kind: type[InterlockError], code: str
) -> None:
    with Client(
        "http://interlock.test", client_id="a", client_secret="s", transport=_mock(status, body)
    ) as il:
        il.retries = 0
        with pytest.raises(kind) as err:
            il.act("run_1", "tickets.get", {"ticket_id": "T-1"})
    assert err.value.code == code
