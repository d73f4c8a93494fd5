"""Appending to and reading the audit chain, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import canonical_json
from interlock._internal.audit.chain import (
    GENESIS_HASH,
    AuditEvent,
    append_event,
    append_event_tx,
    event_hash,
    iter_events,
)
from interlock._internal.audit.verify import verify_chain
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import make_engine, transaction
from interlock._internal.store.migrate import upgrade
from interlock._internal.store.tables import metadata
from interlock.exceptions import AuditIntegrityError, StorageError


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


def _append_some(engine: Engine, n: int) -> list[AuditEvent]:
    return [
        append_event_tx(
            engine,
            kind="decision" if i % 2 else "execution",
            actor=f"agent-{i % 3}",
            workflow="support-triage",
            run_id=f"run-{i % 2}",
            data={"i": i, "tool": "refund", "verb": "refund", "reasons": ["limit"], "note": "héllo ✓"},
        )
        for i in range(n)
    ]


def test_empty_chain_verifies(engine: Engine) -> None:
    report = verify_chain(engine)
    assert report.ok
    assert (report.events, report.tip_seq, report.tip_hash) == (0, 0, GENESIS_HASH)
    assert report.message == "audit chain OK: 0 events, tip 000000000000"


def test_append_links_events_and_verifies(engine: Engine) -> None:
    events = _append_some(engine, 5)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in zip(events, events[1:]):
        assert after.prev_hash == before.hash
        assert after.ts >= before.ts
    report = verify_chain(engine)
    assert report.ok, report.message
    assert (report.events, report.tip_seq, report.tip_hash) == (5, 5, events[-1].hash)
    assert report.message == f"audit chain OK: 5 events, tip {events[-1].hash[:12]}"


def test_body_is_canonical_json_of_every_field(engine: Engine) -> None:
    event = append_event_tx(
        engine,
        kind="approval",
        actor="alice",
        workflow="wf",
        run_id="r1",
        data={"b": {"z": 1, "a": [3, 2]}, "approver": "alice", "args_hash": "ab" * 32},
    )
    with engine.connect() as conn:
        row = conn.execute(text("SELECT body, prev_hash, hash FROM audit_events WHERE seq = 1")).one()
    parsed = json.loads(row.body)
    assert parsed == {
        "seq": 1,
        "ts": event.ts,
        "kind": "approval",
        "actor": "alice",
        "workflow": "wf",
        "run_id": "r1",
        "data": event.data,
    }
    assert row.body == canonical_json(parsed).decode()
    assert row.hash == event.hash == event_hash(GENESIS_HASH, row.body)


def test_returned_data_is_what_was_hashed(engine: Engine) -> None:
    event = append_event_tx(engine, kind="k", actor=None, data={"tags": {"b", "a"}, "pair": (1, 2)})
    assert event.data == {"tags": ["a", "b"], "pair": [1, 2]}
    assert next(iter_events(engine)) == event


def test_event_commits_and_rolls_back_with_the_callers_transaction(engine: Engine) -> None:
    append_event_tx(engine, kind="k", actor="a", data={})

    class Boom(Exception):
        pass

    def append_then_fail() -> None:
        with transaction(engine) as conn:
            append_event(conn, kind="k", actor="a", data={"lost": True})
            raise Boom

    with pytest.raises(Boom):
        append_then_fail()
    with transaction(engine) as conn:
        conn.execute(text("SELECT 1"))  # a caller's own write would go here
        kept = append_event(conn, kind="k", actor="a", data={"kept": True})
    assert kept.seq == 2
    assert [e.data for e in iter_events(engine)] == [{}, {"kept": True}]
    assert verify_chain(engine).ok


def test_several_events_in_one_transaction(engine: Engine) -> None:
    with transaction(engine) as conn:
        first = append_event(conn, kind="k", actor="a", data={"n": 1})
        second = append_event(conn, kind="k", actor="a", data={"n": 2})
    assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
    assert verify_chain(engine).events == 2


def test_iter_events_filters_and_pages(engine: Engine) -> None:
    events = _append_some(engine, 9)
    assert list(iter_events(engine, batch=2)) == events
    assert list(iter_events(engine, run_id="run-1", batch=2)) == [e for e in events if e.run_id == "run-1"]
    assert list(iter_events(engine, kinds=["decision"])) == [e for e in events if e.kind == "decision"]
    assert list(iter_events(engine, kinds=[])) == []
    assert list(iter_events(engine, since_seq=6, batch=1)) == events[6:]
    assert list(iter_events(engine, run_id="run-0", kinds={"execution"}, since_seq=2)) == [
        e for e in events if e.seq > 2 and e.run_id == "run-0" and e.kind == "execution"
    ]


@pytest.mark.parametrize("batch", [1, 2, 7, 5000])
def test_verify_pages_through_the_chain(engine: Engine, batch: int) -> None:
    events = _append_some(engine, 10)
    seen: list[int] = []
    report = verify_chain(engine, batch=batch, progress=seen.append)
    assert report.ok
    assert report.tip_hash == events[-1].hash
    assert seen[-1] == 10


def test_overlong_fields_are_refused_on_both_engines(engine: Engine) -> None:
    with pytest.raises(StorageError, match="kind has 51 characters"):
        append_event_tx(engine, kind="k" * 51, actor="a", data={})
    with pytest.raises(StorageError, match="run_id"):
        append_event_tx(engine, kind="k", actor="a", run_id="r" * 65, data={})
    assert verify_chain(engine).events == 0


def test_data_without_json_form_writes_nothing(engine: Engine) -> None:
    with pytest.raises(TypeError):
        append_event_tx(engine, kind="k", actor="a", data={"x": object()})
    with pytest.raises(ValueError):
        append_event_tx(engine, kind="k", actor="a", data={"x": float("nan")})
    assert append_event_tx(engine, kind="k", actor="a", data={}).seq == 1


def test_tip_is_created_for_a_schema_built_without_migrations(db_url: str) -> None:
    eng = make_engine(DatabaseSettings(url=db_url))
    try:
        metadata.create_all(eng)
        assert verify_chain(eng).ok
        first = append_event_tx(eng, kind="k", actor="a", data={})
        append_event_tx(eng, kind="k", actor="a", data={})
        assert first.prev_hash == GENESIS_HASH
        assert verify_chain(eng).events == 2
    finally:
        eng.dispose()


def test_missing_tip_beside_events_blocks_appends(engine: Engine) -> None:
    _append_some(engine, 3)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_head"))
    with pytest.raises(AuditIntegrityError, match="tip record is missing"):
        append_event_tx(engine, kind="k", actor="a", data={})
    report = verify_chain(engine)
    assert (report.ok, report.problem, report.first_bad_seq) == (False, "deleted", None)
    assert report.message == "audit chain broken (deleted): the chain tip record is missing"


def test_verify_while_others_append(engine: Engine) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set() and i < 400:
                append_event_tx(engine, kind="k", actor="w", data={"i": i})
                i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reports = [verify_chain(engine, batch=16) for _ in range(15)]
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert all(r.ok for r in reports), [r.message for r in reports if not r.ok]
    assert verify_chain(engine).ok
