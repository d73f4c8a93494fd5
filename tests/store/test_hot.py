"""The hot path's SQL (``store/hot.py``) gives what SQLAlchemy gives, on SQLite and PostgreSQL:
the same rows (JSON, booleans, floats decoded), the same errors (an integrity error is still one),
all-or-nothing transactions, and connections handed back as they were taken."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from interlock._internal.gateway.statements import INSERT_IDEMPOTENCY, LOAD_RUN_AND_AGENT
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.hot import InsertIgnore, hot_read, hot_write
from interlock.exceptions import StorageError

PAUSED = select(t.workflows.c.name, t.workflows.c.paused).where(t.workflows.c.name == bindparam("w"))
RUN_IN = select(t.runs.c.id).where(t.runs.c.id.in_(bindparam("ids", expanding=True))).order_by(t.runs.c.id)
STEPS_OF = select(t.runs.c.steps).where(t.runs.c.id == bindparam("run_id"))
BUMP = update(t.runs).where(t.runs.c.id == bindparam("run_id")).values(steps=t.runs.c.steps + 1)


def _bump_then_fail(engine: Engine, *, hot: bool) -> None:
    with hot_write(engine) if hot else transaction(engine) as conn:
        conn.execute(BUMP, {"run_id": "run_3" if not hot else "run_1"})
        raise RuntimeError("stage failed")


def _bump_and_insert(engine: Engine, row: dict[str, object]) -> None:
    with hot_write(engine) as hot:
        hot.execute(BUMP, {"run_id": "run_1"})
        hot.execute(INSERT_IDEMPOTENCY, row)


def _seed(engine: Engine) -> None:
    now = time.time()
    with transaction(engine) as conn:
        conn.execute(
            t.workflows.insert().values(name="wf", paused=True, paused_reason="maintenance", updated_at=now)
        )
        for i in (1, 2, 3):
            conn.execute(
                t.runs.insert().values(
                    id=f"run_{i}",
                    workflow="wf",
                    workflow_version_id="wf@1",
                    agent_id="bot",
                    environment="production",
                    state="running",
                    trigger={"kind": "manual", "n": i, "nested": {"x": [1.5, None]}},
                    steps=0,
                    tool_calls=0,
                    cost_micros=0,
                    started_at=now + i / 10,
                )
            )


def test_rows_match_sqlalchemy(engine: Engine) -> None:
    _seed(engine)
    params = {"run_id": "run_2", "agent_id": "bot"}
    with reading(engine) as conn:
        expected = dict(conn.execute(LOAD_RUN_AND_AGENT, params).mappings().one())
        expected_paused = conn.execute(PAUSED, {"w": "wf"}).one()
    with hot_read(engine) as hot:
        got = hot.execute(LOAD_RUN_AND_AGENT, params).mappings().one()
        got_paused = hot.execute(PAUSED, {"w": "wf"}).one()
        missing = hot.execute(LOAD_RUN_AND_AGENT, {"run_id": "nope", "agent_id": "bot"}).mappings().first()
    assert got == expected
    assert got["trigger"] == {"kind": "manual", "n": 2, "nested": {"x": [1.5, None]}}
    assert isinstance(got["started_at"], float)
    assert tuple(got_paused) == tuple(expected_paused) == ("wf", True)
    assert got_paused[1] is True
    assert missing is None


def test_in_lists_bound_at_execution(engine: Engine) -> None:
    _seed(engine)
    with hot_read(engine) as hot:
        assert [r[0] for r in hot.execute(RUN_IN, {"ids": ["run_3", "run_1", "x"]})] == ["run_1", "run_3"]
        assert hot.execute(RUN_IN, {"ids": ["run_2"]}).all() == [("run_2",)]
        assert hot.execute(RUN_IN, {"ids": []}).all() == []


def test_write_commits_or_rolls_back_as_a_whole(engine: Engine) -> None:
    _seed(engine)
    with hot_write(engine) as hot:
        assert hot.execute(BUMP, {"run_id": "run_1"}).rowcount == 1
        assert hot.execute(BUMP, {"run_id": "missing"}).rowcount == 0
    with pytest.raises(RuntimeError):
        _bump_then_fail(engine, hot=True)
    with reading(engine) as conn:
        assert conn.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 1


def test_integrity_error_is_storage_error_caused_by_integrity_error(engine: Engine) -> None:
    _seed(engine)
    row = {
        "agent_id": "bot",
        "key": "k1",
        "run_id": "run_1",
        "args_hash": "h",
        "state": "in_flight",
        "created_at": time.time(),
    }
    with hot_write(engine) as hot:
        hot.execute(INSERT_IDEMPOTENCY, row)
    with pytest.raises(StorageError) as caught:
        _bump_and_insert(engine, row)
    assert isinstance(caught.value.__cause__, IntegrityError)
    with reading(engine) as conn:  # the bump before the failing insert rolled back with it
        assert conn.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 0
    # The connection went back to the pool usable, in either kind of transaction.
    for _ in range(3):
        with hot_write(engine) as hot:
            hot.execute(BUMP, {"run_id": "run_2"})
        with transaction(engine) as conn:
            conn.execute(BUMP, {"run_id": "run_2"})
    with hot_read(engine) as hot:
        assert hot.execute(STEPS_OF, {"run_id": "run_2"}).scalar_one() == 6


def test_insert_ignore_says_whether_it_wrote(engine: Engine) -> None:
    insert = InsertIgnore(t.audit_head)
    with hot_write(engine) as hot:
        hot.execute(t.audit_head.delete())
        assert insert.run(hot, {"id": 7, "seq": 0, "hash": "0" * 64}) is True
        assert insert.run(hot, {"id": 7, "seq": 5, "hash": "1" * 64}) is False
    with transaction(engine) as conn:  # the same statement on an ordinary connection
        assert insert.run(conn, {"id": 8, "seq": 0, "hash": "0" * 64}) is True
    with hot_read(engine) as hot:
        rows = hot.execute(select(t.audit_head).order_by(t.audit_head.c.id)).all()
    assert rows == [(7, 0, "0" * 64), (8, 0, "0" * 64)]


def test_reads_leave_the_connection_transactional(engine: Engine) -> None:
    """A read runs in autocommit; the connection it used must write in transactions again."""
    _seed(engine)
    for _ in range(engine.pool.size() + 2):  # type: ignore[attr-defined]
        with hot_read(engine) as hot:
            hot.execute(STEPS_OF, {"run_id": "run_3"})
    with pytest.raises(RuntimeError):
        _bump_then_fail(engine, hot=False)
    with pytest.raises(RuntimeError):
        _bump_then_fail(engine, hot=True)
    with hot_read(engine) as hot:
        assert hot.execute(STEPS_OF, {"run_id": "run_3"}).scalar_one() == 0
        assert hot.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 0


@pytest.mark.postgres
def test_a_connection_that_died_while_idle_is_replaced(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ping on a connection just used (no round trip per checkout); one that sat idle is checked
    and, when its server side is gone, replaced before the action uses it."""
    from sqlalchemy import text

    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store import engine as engine_module
    from interlock._internal.store.engine import make_engine
    from interlock._internal.store.migrate import upgrade

    engine = make_engine(DatabaseSettings(url=pg_url, pool_size=1))
    try:
        upgrade(engine)
        with hot_read(engine) as hot:
            pid = hot.execute(text("SELECT pg_backend_pid()")).scalar_one()
        other = make_engine(DatabaseSettings(url=pg_url, pool_size=1))
        try:
            with other.connect() as conn:  # the pooled connection of `engine` stays idle
                conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        finally:
            other.dispose()
        monkeypatch.setattr(engine_module, "IDLE_PING_S", 0.0)
        with hot_read(engine) as hot:
            assert hot.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        with hot_write(engine) as hot:
            hot.execute(t.audit_head.delete())
    finally:
        engine.dispose()


def test_connections_are_kept_between_transactions_and_bounded(engine: Engine) -> None:
    """The hot path keeps a few driver connections checked out between its transactions (a pool
    checkout costs more than a statement), never more than KEEP idle, and closes them with the
    engine."""
    import threading

    from interlock._internal.store import hot as hot_module

    _seed(engine)
    with hot_read(engine) as hot:
        first = hot._driver
    for _ in range(5):
        with hot_write(engine) as hot:
            assert hot._driver is first  # the one just given back, not a new checkout
            hot.execute(BUMP, {"run_id": "run_1"})
    kept = hot_module._kept(engine)
    assert kept is not None
    assert len(kept.idle) == 1
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]

    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def busy() -> None:
        try:
            with hot_read(engine) as hot:
                barrier.wait(timeout=30)  # eight connections in use at once
                hot.execute(STEPS_OF, {"run_id": "run_2"})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=busy) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(kept.idle) == kept.limit == min(hot_module.KEEP, engine.pool.size() // 2)  # type: ignore[attr-defined]
    assert engine.pool.checkedout() == kept.limit  # type: ignore[attr-defined]
    drivers = [fairy.driver_connection for _, fairy in kept.idle]
    # Whatever the hot path keeps, the rest of the pool still serves everything else at once.
    others = [engine.connect() for _ in range(engine.pool.size() - kept.limit)]  # type: ignore[attr-defined]
    for conn in others:
        conn.close()
    engine.dispose()
    assert len(kept.idle) == 0
    if engine.dialect.name == "postgresql":
        assert all(d.closed for d in drivers)
    with hot_read(engine) as hot:  # the engine still works after dispose, as SQLAlchemy's does
        assert hot.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 5


def _round_trip_counter() -> Any:
    """bench/server_cost.py's counting proxy (the figure the bench prints is the one tested here)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "server_cost.py"
    spec = importlib.util.spec_from_file_location("bench_server_cost", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CountingProxy


@pytest.mark.postgres
def test_a_postgresql_write_transaction_waits_only_for_the_answers_it_reads(pg_url: str) -> None:
    """Writes whose answers nobody reads go out together with the next statement that is read and
    with the commit (psycopg's pipeline mode): three unread writes, one read and the commit take
    two round trips, not six. What is read sees the writes before it, and a row count asked for
    later is the statement's own."""
    from sqlalchemy.engine import make_url

    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine
    from interlock._internal.store.migrate import upgrade

    url = make_url(pg_url)
    proxy = _round_trip_counter()((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    engine = make_engine(DatabaseSettings(url=proxied, pipeline_writes="on"))
    try:
        upgrade(engine)
        with transaction(engine) as conn:
            conn.execute(t.runs.delete().where(t.runs.c.id.in_(["run_1", "run_2", "run_3"])))
            conn.execute(t.workflows.delete().where(t.workflows.c.name == "wf"))
        _seed(engine)
        with hot_write(engine) as hot:  # warm: the connection is open and kept
            hot.execute(BUMP, {"run_id": "run_3"})
        before = proxy.round_trips
        with hot_write(engine) as hot:
            first = hot.execute(BUMP, {"run_id": "run_1"})
            missing = hot.execute(BUMP, {"run_id": "missing"})
            hot.execute(BUMP, {"run_id": "run_1"})
            assert hot.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 2
            assert (first.rowcount, missing.rowcount) == (1, 0)
        assert proxy.round_trips - before == 2
        with hot_read(engine) as hot:
            assert hot.execute(STEPS_OF, {"run_id": "run_1"}).scalar_one() == 2
    finally:
        engine.dispose()
        proxy.close()


def test_pipelining_is_chosen_by_where_the_database_is() -> None:
    """``database.pipeline_writes``: "auto" pipelines a server across a network (round trips cost
    more than the client CPU pipelining adds), not one on this host."""
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import PIPELINE_WRITES, make_engine

    def chosen(url: str, setting: str = "auto") -> bool:
        engine = make_engine(DatabaseSettings(url=url, pipeline_writes=setting))  # type: ignore[arg-type]
        try:
            return bool(engine.__dict__.get(PIPELINE_WRITES))
        finally:
            engine.dispose()

    assert chosen("postgresql+psycopg://u@db.internal:5432/interlock") is True
    for local in ("127.0.0.1", "localhost", "[::1]"):
        assert chosen(f"postgresql+psycopg://u@{local}:5432/interlock") is False
    assert chosen("postgresql+psycopg://u@/interlock?host=/run/postgresql") is False
    assert chosen("postgresql+psycopg://u@127.0.0.1/interlock", "on") is True
    assert chosen("postgresql+psycopg://u@db.internal/interlock", "off") is False
    assert chosen("sqlite:///:memory:", "on") is False


@pytest.mark.postgres
def test_governed_actions_with_pipelined_writes(
    pg_url: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole pipeline on pipelined writes: actions execute and are recorded once, an
    idempotency key replays its answer and refuses other arguments, and the audit log verifies."""
    from pathlib import Path

    from interlock import Interlock, Settings
    from interlock.exceptions import ConflictError

    d = Path(str(tmp_path))
    (d / "noop_pipelined.py").write_text("def noop(ticket_id):\n    return {'ok': ticket_id}\n")
    (d / "workflow.yaml").write_text(
        """
name: piped
version: "1"
owner: ops@example.com
objective: pipelined writes
success_metric: {name: done}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [read]}
tools:
  - name: noop.read
    verb: read
    input_schema: {type: object, properties: {ticket_id: {type: string}}, required: [ticket_id]}
    upstream: {kind: python, callable: "noop_pipelined:noop"}
budgets:
  per_run: {max_steps: 5}
rules:
  allow:
    - {id: reads, verb: read}
"""
    )
    monkeypatch.syspath_prepend(str(d))
    il = Interlock(Settings(database={"url": pg_url, "pipeline_writes": "on"}))  # type: ignore[arg-type]
    try:
        il.migrate()
        il.load_workflow(d / "workflow.yaml")
        creds = il.agents.create("bot", workflow="piped", environment="production", actor="test")
        token = il.issue_token(creds.client_id, creds.client_secret).token
        run = il.start_run(token)
        first = il.act(token, run.id, "noop.read", {"ticket_id": "T-1"}, idempotency_key="k1")
        again = il.act(token, run.id, "noop.read", {"ticket_id": "T-1"}, idempotency_key="k1")
        assert first.status == "executed"
        assert first.result == {"ok": "T-1"}
        assert again.replayed
        assert again.step_id == first.step_id
        with pytest.raises(ConflictError):
            il.act(token, run.id, "noop.read", {"ticket_id": "T-2"}, idempotency_key="k1")
        statuses = [il.act(token, run.id, "noop.read", {"ticket_id": f"T-{i}"}).status for i in range(6)]
        assert statuses == ["executed"] * 4 + ["limited", "denied"]  # max_steps 5: the cap holds
        assert il.verify_audit().ok
    finally:
        il.close()
