"""Governed functions: calls become actions, over the embedded Interlock and over the remote clients."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import select, update
from test_client import Served, serve

from conftest import Harness
from interlock import (
    ActionDenied,
    ApprovalPending,
    ArgumentsInvalid,
    InterlockError,
    governed,
)
from interlock._internal.store import tables as t

current_run: ContextVar[str] = ContextVar("current_run")


class Refund(BaseModel):
    refund_id: str
    ticket_id: str
    amount: float
    currency: str
    status: str


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[Harness]:
    h = Harness(sqlite_url)
    yield h
    h.close()


@pytest.fixture
def served(sqlite_url: str) -> Iterator[Served]:
    yield from serve(Harness(sqlite_url))


def approve_and_execute(h: Harness, approval_id: str) -> None:
    with h.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(state="approved"))
    result = h.il.pipeline.execute_approved(approval_id)
    assert result is not None
    assert result.executed


def pending_approval(h: Harness, run_id: str) -> str:
    for _ in range(100):
        with h.il.engine.connect() as conn:
            row = conn.execute(
                select(t.approvals.c.id).where(
                    t.approvals.c.run_id == run_id, t.approvals.c.state == "pending"
                )
            ).first()
        if row is not None:
            return str(row[0])
        time.sleep(0.05)
    raise AssertionError("no approval was requested")


def test_embedded_governed_functions(harness: Harness, desk: Any) -> None:
    il = harness.il
    token = harness.tokens["triage-bot"]

    @governed(il, tool="tickets.get", run=current_run, token=token)
    def get_ticket(ticket_id: str) -> dict[str, Any]:
        """Read one ticket."""
        raise AssertionError("the body never runs")

    @governed(il, tool="customers.delete", run=current_run, token=token)
    def delete_customer(customer_id: str) -> None:
        raise NotImplementedError

    @governed(il, tool="payments.refund", run=current_run, token=token, reasoning="late delivery")
    def refund(ticket_id: str, amount: float, currency: str = "USD", reason: str = "late") -> Refund:
        raise NotImplementedError

    assert get_ticket.__name__ == "get_ticket"
    assert get_ticket.__doc__ == "Read one ticket."
    assert refund.arguments("T-1002", 30) == {
        "ticket_id": "T-1002",
        "amount": 30,
        "currency": "USD",
        "reason": "late",
    }

    run_id = harness.run()
    token_var = current_run.set(run_id)
    try:
        ticket = get_ticket("T-1001")
        assert ticket["ticket_id"] == "T-1001"

        small = refund("T-1002", 30)
        assert isinstance(small, Refund)
        assert small.amount == 30

        with pytest.raises(ActionDenied) as denied:
            delete_customer("C-1001")
        assert denied.value.decision is not None
        assert denied.value.decision.decision == "deny"
        assert "forbid:no-deletes" in denied.value.decision.policy_ids

        with pytest.raises(ArgumentsInvalid):
            get_ticket("not-a-ticket")

        with pytest.raises(ApprovalPending) as pending:
            refund("T-1003", 120, reason="broken item")
        approval_id = pending.value.approval_id
        assert pending.value.result is not None
        assert pending.value.result.status == "pending_approval"

        with pytest.raises(ApprovalPending):
            refund.wait(approval_id, timeout_s=0.3)  # nobody decided yet
        approve_and_execute(harness, approval_id)
        big = refund.wait(approval_id, timeout_s=5)
        assert big.amount == 120
        assert big.ticket_id == "T-1003"
    finally:
        current_run.reset(token_var)

    assert desk.refunds_total() == 150
    steps = il.get_run(run_id).steps_detail
    assert [s.status for s in steps] == [
        "executed",
        "executed",
        "denied",
        "invalid",
        "pending_approval",
        "executed",
    ]
    assert steps[1].reasoning == "late delivery"


def test_the_run_must_be_known_at_call_time(harness: Harness) -> None:
    @governed(harness.il, tool="tickets.get", run=current_run, token=harness.tokens["triage-bot"])
    def get_ticket(ticket_id: str) -> dict[str, Any]:
        raise NotImplementedError

    with pytest.raises(InterlockError) as err:
        get_ticket("T-1001")
    assert err.value.code == "no_run"


def test_decorating_the_wrong_kind_of_function(harness: Harness) -> None:
    with pytest.raises(TypeError, match="token"):
        governed(harness.il, tool="tickets.get", run="r")(lambda ticket_id: None)

    async def afn(ticket_id: str) -> None:
        raise NotImplementedError

    with pytest.raises(TypeError, match="AsyncClient"):
        governed(harness.il, tool="tickets.get", run="r", token="t")(afn)


def test_remote_governed_functions_wait_for_the_decision(served: Served, desk: Any) -> None:
    with served.client() as client:
        run = client.start_run()

        @governed(client, tool="payments.refund", run=lambda: run.id, wait_s=20)
        def refund(ticket_id: str, amount: float, currency: str, reason: str) -> Refund:
            raise NotImplementedError

        assert refund("T-1002", 30, "USD", "late").amount == 30

        # A person approves while the call waits (wait_s): the call returns the executed refund.
        def approve_when_asked() -> None:
            served.approve(pending_approval(served.h, run.id))

        timer = threading.Timer(0.5, approve_when_asked)
        timer.start()
        assert refund("T-1003", 120, "USD", "broken item").amount == 120
        timer.join()

        # A rejection raises ActionDenied with the approver's comment.
        second = refund.act("T-1004", 250, "USD", "changed mind")
        assert second.approval_id
        served.approve(second.approval_id, reject=True, comment="outside the refund window")
        with pytest.raises(ActionDenied) as rejected:
            refund.wait(second.approval_id, timeout_s=5)
        assert rejected.value.code == "approval_rejected"
        assert "outside the refund window" in rejected.value.message
    assert desk.refunds_total() == 150


def test_async_governed_over_the_async_client(served: Served, desk: Any) -> None:
    async def main() -> tuple[dict[str, Any], str]:
        async with served.aclient() as client:
            run = await client.start_run()

            @governed(client, tool="tickets.get", run=run.id)
            async def get_ticket(ticket_id: str) -> dict[str, Any]:
                raise NotImplementedError

            @governed(client, tool="payments.refund", run=run.id)
            async def refund(ticket_id: str, amount: float, currency: str, reason: str) -> dict[str, Any]:
                raise NotImplementedError

            ticket = await get_ticket("T-1001")
            try:
                await refund("T-1003", 120, "USD", "broken item")
            except ApprovalPending as pending:
                return ticket, pending.approval_id
            raise AssertionError("a 120 refund needs approval")

    ticket, approval_id = asyncio.run(main())
    assert ticket["ticket_id"] == "T-1001"
    assert approval_id
    assert desk.refunds_total() == 0
