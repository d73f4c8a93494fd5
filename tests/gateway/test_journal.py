"""The execution journal, fail-closed stages, storage failures after the call, and recovery.

In process, on SQLite and PostgreSQL; the upstream is an in-memory one that counts its own calls.
(The same properties with killed server processes are in tests/e2e/test_crash_recovery.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.gateway import pipeline as pipeline_module
from interlock._internal.gateway import records
from interlock._internal.gateway.recovery import recover_expired
from interlock._internal.store import tables as t
from interlock.exceptions import ArgumentsInvalid, ConflictError, StorageError
from interlock.testing import InMemoryUpstream

REFUND = {"ticket_id": "T-1003", "amount": 30, "currency": "USD", "reason": "late delivery"}
BIG_REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


@pytest.fixture
def kit(db_url: str) -> Iterator[tuple[Harness, InMemoryUpstream]]:
    h = Harness(db_url)
    upstream = InMemoryUpstream()
    upstream.stub("payments.refund", lambda **a: _refunded(a, len(upstream.calls)))
    upstream.stub("tickets.get", lambda **a: _ticket(a["ticket_id"]))
    h.il.load_workflow(SUPPORT_TRIAGE, transports={"*": upstream})
    yield h, upstream
    h.close()


def _refunded(args: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        **{k: args[k] for k in ("ticket_id", "amount", "currency")},
        "refund_id": f"R-{n}",
        "status": "succeeded",
    }


def _ticket(ticket_id: str) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "customer_id": "C-1",
        "subject": "s",
        "body": "b",
        "status": "open",
        "priority": "normal",
        "group": None,
        "tags": [],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "messages": [],
    }


def events(h: Harness, kind: str) -> list[Any]:
    return [e for e in iter_events(h.il.engine) if e.kind == kind]


def journal_rows(h: Harness) -> list[dict[str, Any]]:
    with h.il.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(t.executions)).mappings()]


def later(h: Harness) -> float:
    """A moment after every lease has expired."""
    return time.time() + 10_000


# ---- the journal ----------------------------------------------------------------------------------


def test_each_call_is_journaled_with_its_audit_event_before_it_leaves(kit) -> None:
    h, upstream = kit
    run = h.run()
    done = h.act(run, "payments.refund", REFUND, idempotency_key="k-1")
    assert done.status == "executed"
    [executing] = events(h, "execution.started")
    [executed] = events(h, "action.executed")
    assert executing.seq < executed.seq
    assert executing.data["step"] == done.step_id
    assert executing.data["tool"] == "payments.refund"
    assert executing.data["args_hash"] == done.decision.args_hash
    # The upstream saw the journaled key, derived from the action, not the agent's raw key.
    key = executing.data["upstream_key"]
    assert key.startswith("il1-")
    assert key != "k-1"
    assert upstream.calls[-1].idempotency_key == key
    [row] = journal_rows(h)
    assert (row["state"], row["payload"], row["lease_expires_at"]) == ("done", None, None)


def test_the_upstream_key_is_stable_across_retries_of_a_failed_call(kit) -> None:
    h, upstream = kit
    run = h.run()
    upstream.stub("payments.refund", lambda **a: (_ for _ in ()).throw(RuntimeError("down")))
    assert h.act(run, "payments.refund", REFUND, idempotency_key="k-2").status == "failed"
    upstream.stub("payments.refund", lambda **a: _refunded(a, 9))
    assert h.act(run, "payments.refund", REFUND, idempotency_key="k-2").status == "executed"
    first, second = upstream.calls[-2:]
    assert first.idempotency_key == second.idempotency_key
    # Without an agent key every action is its own: distinct keys.
    h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert upstream.calls[-1].idempotency_key != upstream.calls[-2].idempotency_key


def test_an_approved_action_carries_the_key_of_its_request(kit) -> None:
    h, upstream = kit
    run = h.run()
    pending = h.act(run, "payments.refund", BIG_REFUND, idempotency_key="k-3")
    assert pending.status == "pending_approval"
    _approve(h, pending.approval_id)
    result = h.il.pipeline.execute_approved(pending.approval_id)
    assert result is not None
    assert result.status == "executed"
    [executing] = events(h, "execution.started")
    assert executing.data["approval"] == pending.approval_id
    assert upstream.calls[-1].idempotency_key == executing.data["upstream_key"]


# ---- fail closed: an unexpected error in any stage before execution ------------------------------


@pytest.mark.parametrize(
    "stage",
    [
        "check_schema",
        "classify_risk",
        "check_policy",
        "run_brakes",
        "check_stop_rules",
        "reserve_and_journal",
    ],
)
def test_an_error_in_any_stage_before_execution_denies_with_pipeline_error(kit, monkeypatch, stage) -> None:
    h, upstream = kit
    run = h.run()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"injected failure in {stage}")

    monkeypatch.setattr(pipeline_module, stage, broken)
    result = h.act(run, "payments.refund", REFUND, idempotency_key=f"k-{stage}")
    assert result.status == "denied"
    assert result.decision.reason_codes == ["pipeline_error"]
    assert stage in result.decision.reasons[0].message
    assert upstream.calls == []
    assert journal_rows(h) == []
    assert events(h, "execution.started") == []
    [denied] = events(h, "action.denied")
    assert denied.data["reasons"] == ["pipeline_error"]


# ---- a storage failure after the upstream answered -------------------------------------------------


def _fail_recording(monkeypatch: pytest.MonkeyPatch) -> None:
    real = records.write_step

    def failing(*args: Any, **kwargs: Any) -> None:
        if args[5] in ("executed", "failed"):  # the outcome's record, not a refusal's
            raise StorageError("injected: the database went away")
        real(*args, **kwargs)

    monkeypatch.setattr(records, "write_step", failing)


def test_a_storage_failure_after_the_call_never_runs_it_again(kit, monkeypatch) -> None:
    h, upstream = kit
    run = h.run()
    _fail_recording(monkeypatch)
    with pytest.raises(StorageError) as err:
        h.act(run, "payments.refund", REFUND, idempotency_key="k-s")
    assert err.value.code == "outcome_unrecorded"
    monkeypatch.undo()
    assert len(upstream.calls) == 1
    [row] = journal_rows(h)
    assert row["state"] == "unrecorded"  # never "not started"
    # The agent's retry does not run it again; nor does anything else.
    with pytest.raises(ConflictError) as busy:
        h.act(run, "payments.refund", REFUND, idempotency_key="k-s")
    assert busy.value.code == "idempotency_in_flight"
    h.il.approvals.resume_held()
    assert len(upstream.calls) == 1
    # Housekeeping makes it a final "outcome unknown", with its audit event and a handoff.
    assert recover_expired(h.il.engine) == [row["id"]]
    assert recover_expired(h.il.engine, now=later(h)) == []  # once
    answer = h.act(run, "payments.refund", REFUND, idempotency_key="k-s")
    assert answer.status == "outcome_unknown"
    assert answer.decision.reason_codes[0] == "outcome_unknown"
    [unknown] = events(h, "action.outcome_unknown")
    assert unknown.data["upstream_key"] == upstream.calls[0].idempotency_key
    [handoff] = h.il.handoffs.list(state="open")
    assert (handoff.reason_code, handoff.step_id) == ("outcome_unknown", row["id"])
    assert h.il.get_run(run).state == "escalated"
    assert len(upstream.calls) == 1
    assert h.il.verify_audit().ok


def test_a_storage_failure_after_an_approved_call_leaves_it_claimed_then_unknown(kit, monkeypatch) -> None:
    h, upstream = kit
    run = h.run()
    pending = h.act(run, "payments.refund", BIG_REFUND, idempotency_key="k-a")
    _approve(h, pending.approval_id)
    _fail_recording(monkeypatch)
    with pytest.raises(StorageError):
        h.il.pipeline.execute_approved(pending.approval_id)
    monkeypatch.undo()
    assert len(upstream.calls) == 1
    # Not reset to "not executed": no path (resume_held, a second claim) runs it again.
    assert _approval(h, pending.approval_id)["execution"] == "executing"
    h.il.approvals.resume_held()
    assert h.il.pipeline.execute_approved(pending.approval_id) is None
    assert len(upstream.calls) == 1
    recover_expired(h.il.engine, now=later(h))
    approval = _approval(h, pending.approval_id)
    assert approval["execution"] == "unknown"
    assert approval["outcome"]["status"] == "outcome_unknown"
    answer = h.act(run, "payments.refund", BIG_REFUND, idempotency_key="k-a")
    assert answer.status == "outcome_unknown"  # not a stale pending_approval
    assert [x.reason_code for x in h.il.handoffs.list(state="open")] == ["outcome_unknown"]
    h.il.approvals.resume_held()
    assert len(upstream.calls) == 1


def test_an_approval_claimed_by_a_dead_process_before_its_call_is_released(kit) -> None:
    h, upstream = kit
    run = h.run()
    pending = h.act(run, "payments.refund", BIG_REFUND)
    _approve(h, pending.approval_id)
    with h.il.engine.begin() as conn:  # a process claimed it, then died before journaling
        conn.execute(
            t.approvals.update()
            .where(t.approvals.c.id == pending.approval_id)
            .values(execution="executing", lease_expires_at=time.time() - 1)
        )
    recover_expired(h.il.engine)
    assert _approval(h, pending.approval_id)["execution"] is None
    [result] = h.il.approvals.resume_held()
    assert result.status == "executed"
    assert len(upstream.calls) == 1


# ---- a person resolves an unknown outcome ---------------------------------------------------------


def _unknown(h: Harness, run: str, key: str, monkeypatch: pytest.MonkeyPatch) -> str:
    _fail_recording(monkeypatch)
    with pytest.raises(StorageError):
        h.act(run, "payments.refund", REFUND, idempotency_key=key)
    monkeypatch.undo()
    recover_expired(h.il.engine, now=later(h))
    [handoff] = h.il.handoffs.list(state="open")
    return handoff.id


def test_it_happened_needs_evidence_and_answers_executed(kit, monkeypatch) -> None:
    h, upstream = kit
    run = h.run()
    handoff = _unknown(h, run, "k-h", monkeypatch)
    with pytest.raises(ArgumentsInvalid):
        h.il.resolve_handoff(handoff, action="happened", actor="operator:ops")
    with pytest.raises(ArgumentsInvalid):  # the ordinary resolutions do not settle an unknown outcome
        h.il.resolve_handoff(handoff, action="resume", actor="operator:ops")
    resolved, result = h.il.resolve_handoff(
        handoff, action="happened", actor="operator:ops", evidence="refund R-1 in the payments ledger"
    )
    assert resolved.state == "resolved"
    assert result is not None
    assert result.status == "executed"
    assert h.act(run, "payments.refund", REFUND, idempotency_key="k-h").status == "executed"
    assert h.il.get_run(run).state == "running"
    [event] = events(h, "action.outcome_resolved")
    assert (event.data["resolution"], event.data["evidence"]) == (
        "happened",
        "refund R-1 in the payments ledger",
    )
    with pytest.raises(ConflictError):
        h.il.resolve_handoff(handoff, action="retry", actor="operator:ops")
    assert len(upstream.calls) == 1


def test_it_did_not_happen_gives_the_cost_back_and_answers_failed(kit, monkeypatch) -> None:
    h, upstream = kit
    run = h.run()
    handoff = _unknown(h, run, "k-n", monkeypatch)
    _, result = h.il.resolve_handoff(
        handoff, action="not_happened", actor="operator:ops", comment="not in ledger"
    )
    assert result is not None
    assert result.status == "failed"
    assert h.act(run, "payments.refund", REFUND, idempotency_key="k-n").status == "failed"
    assert len(upstream.calls) == 1


def test_retry_now_calls_again_with_the_same_upstream_key(kit, monkeypatch) -> None:
    h, upstream = kit
    run = h.run()
    handoff = _unknown(h, run, "k-r", monkeypatch)
    _, result = h.il.resolve_handoff(handoff, action="retry", actor="operator:ops")
    assert result is not None
    assert result.status == "executed"
    assert len(upstream.calls) == 2
    assert upstream.calls[0].idempotency_key == upstream.calls[1].idempotency_key
    answer = h.act(run, "payments.refund", REFUND, idempotency_key="k-r")
    assert (answer.status, answer.replayed) == ("executed", True)
    assert len(upstream.calls) == 2
    assert len(events(h, "execution.started")) == 1  # the retry re-arms the journaled call
    assert h.il.verify_audit().ok


def _approve(h: Harness, approval_id: str | None) -> None:
    with h.il.engine.begin() as conn:
        conn.execute(t.approvals.update().where(t.approvals.c.id == approval_id).values(state="approved"))


def _approval(h: Harness, approval_id: str | None) -> dict[str, Any]:
    with h.il.engine.connect() as conn:
        return dict(conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).mappings().one())
