"""Tampering with stored audit rows is detected, located and named, on SQLite and PostgreSQL.

Every test edits the tables directly with SQL, as someone with database access would.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import canonical_json
from interlock._internal.audit.chain import AuditEvent, append_event_tx, event_hash, iter_events
from interlock._internal.audit.verify import VerifyReport, verify_chain
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade
from interlock.exceptions import AuditIntegrityError

N = 12


def _build(engine: Engine) -> list[AuditEvent]:
    upgrade(engine)
    return [
        append_event_tx(
            engine,
            kind=("decision", "execution", "approval")[i % 3],
            actor=f"agent-{i % 4}",
            workflow="support-triage",
            run_id=f"run-{i % 2}",
            data={"i": i, "decision": "allow", "args_hash": f"{i:064x}"},
        )
        for i in range(N)
    ]


@pytest.fixture
def chain(db_url: str) -> Iterator[tuple[Engine, list[AuditEvent]]]:
    engine = make_engine(DatabaseSettings(url=db_url))
    events = _build(engine)
    assert verify_chain(engine).ok
    yield engine, events
    engine.dispose()


def sql(engine: Engine, statement: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def row(engine: Engine, seq: int) -> dict[str, Any]:
    with engine.connect() as conn:
        found = conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": seq}).mappings().one()
        return dict(found)


def forge(seq: int, prev_hash: str, **data: Any) -> dict[str, Any]:
    """A self-consistent event, as an attacker who knows the format would write it."""
    body = canonical_json(
        {
            "seq": seq,
            "ts": 1.5,
            "kind": "execution",
            "actor": "mallory",
            "workflow": None,
            "run_id": None,
            "data": data,
        }
    ).decode()
    return {
        "seq": seq,
        "ts": 1.5,
        "kind": "execution",
        "actor": "mallory",
        "workflow": None,
        "run_id": None,
        "body": body,
        "prev_hash": prev_hash,
        "hash": event_hash(prev_hash, body),
    }


def insert(engine: Engine, values: dict[str, Any]) -> None:
    sql(
        engine,
        "INSERT INTO audit_events (seq, ts, kind, actor, workflow, run_id, body, prev_hash, hash) "
        "VALUES (:seq, :ts, :kind, :actor, :workflow, :run_id, :body, :prev_hash, :hash)",
        **values,
    )


def shift(engine: Engine, start: int, by: int) -> None:
    """Renumber events from ``start`` on by ``by`` (in two steps: seq is a primary key)."""
    sql(engine, "UPDATE audit_events SET seq = -seq WHERE seq >= :s", s=start)
    sql(engine, "UPDATE audit_events SET seq = -seq + :by WHERE seq < 0", by=by)


def move(engine: Engine, pairs: dict[int, int]) -> None:
    """Give events new seqs at once (old -> new), keeping every other column."""
    for old in pairs:
        sql(engine, "UPDATE audit_events SET seq = :neg WHERE seq = :old", neg=-old, old=old)
    for old, new in pairs.items():
        sql(engine, "UPDATE audit_events SET seq = :new WHERE seq = :neg", new=new, neg=-old)


def broken(engine: Engine, problem: str, seq: int | None) -> VerifyReport:
    report = verify_chain(engine, batch=4)
    assert not report.ok
    assert (report.problem, report.first_bad_seq) == (problem, seq), report.message
    return report


# --- altered -------------------------------------------------------------------------------------


def test_body_edited(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    body = row(engine, 5)["body"].replace('"decision":"allow"', '"decision":"deny"')
    sql(engine, "UPDATE audit_events SET body = :b WHERE seq = 5", b=body)
    report = broken(engine, "altered", 5)
    assert report.events == 4
    assert report.message.startswith("event 5 was altered: its stored hash does not match its body")


def test_hash_edited(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "UPDATE audit_events SET hash = :h WHERE seq = 5", h="f" * 64)
    broken(engine, "altered", 5)


def test_prev_hash_edited(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "UPDATE audit_events SET prev_hash = :h WHERE seq = 5", h="e" * 64)
    assert "prev_hash was changed" in broken(engine, "altered", 5).message


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "someone-else"), ("kind", "read"), ("run_id", "run-x"), ("workflow", None), ("ts", 2.0)],
)
def test_column_edited(chain: tuple[Engine, list[AuditEvent]], column: str, value: object) -> None:
    engine, _ = chain
    sql(engine, f"UPDATE audit_events SET {column} = :v WHERE seq = 5", v=value)
    assert f"its {column} column reads" in broken(engine, "altered", 5).message


def test_body_not_json(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "UPDATE audit_events SET body = 'oops' WHERE seq = 5")
    broken(engine, "altered", 5)
    with pytest.raises(AuditIntegrityError, match="event 5 was altered") as caught:
        verify_chain(engine).raise_if_broken()
    assert caught.value.details["first_bad_seq"] == 5
    with pytest.raises(AuditIntegrityError, match="event 5 has an unreadable body"):
        list(iter_events(engine))


def test_rewritten_and_rehashed(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    fake = forge(5, events[3].hash, note="rewritten")
    sql(engine, "DELETE FROM audit_events WHERE seq = 5")
    insert(engine, fake)
    assert "rewritten and rehashed" in broken(engine, "altered", 5).message


def test_last_event_rewritten_and_rehashed(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    sql(engine, f"DELETE FROM audit_events WHERE seq = {N}")
    insert(engine, forge(N, events[N - 2].hash, note="rewritten"))
    report = broken(engine, "altered", N)
    assert report.events == N


def test_first_event_not_chained_to_genesis(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "DELETE FROM audit_events WHERE seq = 1")
    insert(engine, forge(1, "1" * 64))
    assert "genesis" in broken(engine, "altered", 1).message


# --- deleted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "first"), [("seq = 5", 5), ("seq = 1", 1), ("seq BETWEEN 5 AND 7", 5)])
def test_events_deleted(chain: tuple[Engine, list[AuditEvent]], where: str, first: int) -> None:
    engine, _ = chain
    sql(engine, f"DELETE FROM audit_events WHERE {where}")
    report = broken(engine, "deleted", first)
    assert report.events == first - 1


def test_tail_deleted(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, f"DELETE FROM audit_events WHERE seq > {N - 2}")
    report = broken(engine, "deleted", N - 1)
    assert report.events == N - 2
    assert "the tail was removed" in report.message


def test_every_event_deleted(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "DELETE FROM audit_events")
    broken(engine, "deleted", 1)


def test_deleted_and_renumbered(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "DELETE FROM audit_events WHERE seq = 5")
    shift(engine, 6, -1)
    sql(engine, f"UPDATE audit_head SET seq = {N - 1}")
    assert "renumbered" in broken(engine, "deleted", 5).message


def test_tip_record_deleted(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    sql(engine, "DELETE FROM audit_head")
    broken(engine, "deleted", None)


# --- inserted ------------------------------------------------------------------------------------


def test_inserted_after_the_tip(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    insert(engine, forge(N + 1, events[-1].hash, note="extra"))
    report = broken(engine, "inserted", N + 1)
    assert report.events == N + 1
    assert "after the recorded chain tip" in report.message


def test_inserted_and_renumbered(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    shift(engine, 5, +1)
    insert(engine, forge(5, events[3].hash, note="extra"))
    sql(engine, f"UPDATE audit_head SET seq = {N + 1}")
    report = broken(engine, "inserted", 5)
    assert "both chain to event 4" in report.message


def test_inserted_and_renumbered_carelessly(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    shift(engine, 5, +1)
    insert(engine, {**forge(5, events[3].hash), "hash": "0" * 64})
    broken(engine, "inserted", 5)


def test_copy_of_an_event_appended(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    insert(engine, {**row(engine, 3), "seq": N + 1})
    sql(engine, f"UPDATE audit_head SET seq = {N + 1}")
    broken(engine, "inserted", N + 1)


# --- reordered -----------------------------------------------------------------------------------


def test_two_rows_swapped(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    move(engine, {5: 9, 9: 5})
    assert "holds the event recorded as seq 9" in broken(engine, "reordered", 5).message


def test_neighbours_swapped(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    move(engine, {5: 6, 6: 5})
    broken(engine, "reordered", 5)


def test_bodies_and_hashes_swapped_keeping_seq(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    a, b = row(engine, 5), row(engine, 6)
    sql(
        engine,
        "UPDATE audit_events SET body = :body, hash = :hash WHERE seq = 6",
        body=a["body"],
        hash=a["hash"],
    )
    sql(
        engine,
        "UPDATE audit_events SET body = :body, hash = :hash WHERE seq = 5",
        body=b["body"],
        hash=b["hash"],
    )
    broken(engine, "reordered", 5)


def test_events_rotated(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, _ = chain
    move(engine, {3: 8, 4: 3, 5: 4, 6: 5, 7: 6, 8: 7})
    broken(engine, "reordered", 3)


def test_chained_to_a_different_event(chain: tuple[Engine, list[AuditEvent]]) -> None:
    engine, events = chain
    sql(engine, "DELETE FROM audit_events WHERE seq = 7")
    insert(engine, forge(7, events[2].hash))
    assert "chains to event 3, not to event 6" in broken(engine, "reordered", 7).message


# --- any single edit is caught where it was made ------------------------------------------------

EDITABLE = ["ts", "kind", "actor", "workflow", "run_id", "body", "prev_hash", "hash"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "template.db"
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{path}"))
    _build(engine)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    assert not Path(f"{path}-wal").exists()
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq=st.integers(1, N),
    column=st.sampled_from(EDITABLE),
    text_value=st.text(min_size=1, max_size=70),
    number=st.floats(allow_nan=False, allow_infinity=False),
)
def test_any_single_edit_is_caught_where_it_was_made(
    template: Path, tmp_path: Path, seq: int, column: str, text_value: str, number: float
) -> None:
    path = tmp_path / f"edit-{seq}-{column}.db"
    shutil.copy(template, path)
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{path}"))
    try:
        before = row(engine, seq)[column]
        value: object = number if column == "ts" else text_value
        if column == "body" and text_value.startswith("{"):
            value = json.dumps({**json.loads(before), "extra": text_value})
        if value == before:
            return
        sql(engine, f"UPDATE audit_events SET {column} = :v WHERE seq = :s", v=value, s=seq)
        report = verify_chain(engine, batch=5)
        assert (report.problem, report.first_bad_seq) == ("altered", seq), report.message
    finally:
        engine.dispose()
        path.unlink()
