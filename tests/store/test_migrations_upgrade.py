"""Upgrades keep data: a database written by an earlier schema migrates to head on SQLite and
PostgreSQL with every row kept and the audit log verifying; the migrated tables match the model in
``tables.py``; and nothing opens a database a newer Interlock migrated."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, select, text, update
from sqlalchemy.engine import Engine
from upgrade_data import FIXTURES, load

from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import migrate
from interlock._internal.store.engine import make_engine
from interlock.exceptions import StorageError

FIXTURE_FILES = sorted(FIXTURES.glob("schema-*.json"))


@pytest.fixture
def bare_engine(db_url: str) -> Any:
    """An engine on an empty database (not migrated)."""
    engine = make_engine(DatabaseSettings(url=db_url))
    yield engine
    engine.dispose()


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        return (
            new is not None and old is not None and math.isclose(float(old), float(new), rel_tol=0, abs_tol=0)
        )
    return bool(old == new)


def test_there_is_an_earlier_schema_to_upgrade_from() -> None:
    assert FIXTURE_FILES, "no upgrade fixture: run tests/store/upgrade_data.py"
    for path in FIXTURE_FILES:
        assert json.loads(path.read_text())["revision"] in migrate.revisions()


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
def test_upgrade_to_head_keeps_every_row_and_the_audit_log_verifies(
    bare_engine: Engine, db_url: str, fixture: Path
) -> None:
    data = json.loads(fixture.read_text())
    load(bare_engine, data)
    assert migrate.status(bare_engine).state in ("behind", "current")
    assert migrate.current_revision(bare_engine) == data["revision"]

    migrate.upgrade(bare_engine)
    assert migrate.status(bare_engine).state == "current"

    meta = MetaData()
    meta.reflect(bare_engine)
    with bare_engine.connect() as conn:
        for name, rows in data["tables"].items():
            if name == "alembic_version":
                continue
            assert name in meta.tables, f"table {name} disappeared in the upgrade"
            table = meta.tables[name]
            kept = {
                tuple(row[c.name] for c in table.primary_key.columns): dict(row)
                for row in conn.execute(select(table)).mappings()
            }
            assert len(kept) >= len(rows), f"{name}: {len(rows)} rows before, {len(kept)} after"
            for row in rows:
                key = tuple(row[c.name] for c in table.primary_key.columns)
                assert key in kept, f"{name}: row {key} is gone"
                for column, value in row.items():
                    assert _same(value, kept[key][column]), (
                        f"{name}{key}.{column}: {value!r} -> {kept[key][column]!r}"
                    )

    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    try:
        report = il.verify_audit()
        assert report.ok, report.message
        assert report.events == len(data["tables"]["audit_events"])
    finally:
        il.close()


@pytest.mark.parametrize("fixture", FIXTURE_FILES[-1:], ids=lambda p: p.stem)
def test_upgraded_database_keeps_working(bare_engine: Engine, db_url: str, fixture: Path) -> None:
    """After the upgrade, today's code reads the old rows and writes after them: the pending
    approval from before is decided and executes, a new run acts, and the chain still verifies."""
    data = json.loads(fixture.read_text())
    load(bare_engine, data)
    pending = [a["id"] for a in data["tables"]["approvals"] if a["state"] == "pending"]
    assert pending
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    try:
        il.migrate()
        runtime = il.load_workflow(
            Path(__file__).resolve().parents[2] / "examples/support-triage/workflow.yaml"
        )
        assert runtime.name == "support-triage"
        creds = il.agents.rotate_secret("triage-bot", actor="test")  # an agent made before the upgrade
        token = il.issue_token(creds.client_id, creds.client_secret).token
        run = il.start_run(token, trigger={"after": "upgrade"}).id
        assert il.act(token, run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"
        record, _ = il.operators.create("carol", roles=["approver"], workflows=None, actor="test")
        view = il.approvals.decide(pending[0], operator=record.principal(), approve=True)
        assert view.state == "approved", view
        report = il.verify_audit()
        assert report.ok, report.message
        assert report.events > len(data["tables"]["audit_events"])
    finally:
        il.close()


def test_migrated_tables_match_the_model(bare_engine: Engine) -> None:
    """Alembic's migrations and ``tables.py`` describe the same schema, on both engines."""
    migrate.upgrade(bare_engine)
    assert migrate.drift(bare_engine) == []


def test_drift_is_reported(bare_engine: Engine) -> None:
    migrate.upgrade(bare_engine)
    with bare_engine.begin() as conn:
        conn.execute(text("CREATE TABLE stray_table (id INTEGER PRIMARY KEY)"))
    assert any("stray_table" in line for line in migrate.drift(bare_engine))


def _pretend_newer(engine: Engine) -> None:
    meta = MetaData()
    meta.reflect(engine, only=["alembic_version"])
    with engine.begin() as conn:
        conn.execute(update(meta.tables["alembic_version"]).values(version_num="9999_from_the_future"))


def test_a_database_from_a_newer_interlock_is_refused_untouched(bare_engine: Engine) -> None:
    migrate.upgrade(bare_engine)
    _pretend_newer(bare_engine)
    st = migrate.status(bare_engine)
    assert st.state == "newer"
    with pytest.raises(StorageError) as err:
        migrate.upgrade(bare_engine)
    assert err.value.code == "schema_too_new"
    assert "9999_from_the_future" in str(err.value)
    assert migrate.current_revision(bare_engine) == "9999_from_the_future"


def test_status_of_an_empty_database_lists_every_migration(bare_engine: Engine) -> None:
    st = migrate.status(bare_engine)
    assert st.state == "empty"
    assert st.pending == migrate.revisions()
    migrate.upgrade(bare_engine, migrate.revisions()[0])
    st = migrate.status(bare_engine)
    assert st.state == "behind"
    assert st.pending == migrate.revisions()[1:]
