"""Databases made by an earlier schema, kept as data, for the upgrade tests.

``python tests/store/upgrade_data.py`` fills a fresh SQLite database through the real services of
this checkout (runs, actions of every outcome, approvals decided and pending, votes, a denied
action, an idempotency key, a paused agent, a handoff, two signed audit checkpoints) and writes
every row of every table, as stored, to ``upgrade_fixtures/schema-<revision>.json``. Run it when a
release is cut, so the next releases' upgrade tests start from what that release wrote; the files
of earlier releases stay as they are. ``schema-0006.json`` was written by the code of the last
commit whose newest migration was 0006 (this script run against that commit's ``src/``).

:func:`load` puts such a file back into an empty database on either engine: it migrates to the
file's revision, then inserts the rows exactly as they were stored (JSON text byte for byte, so
audit hashes still match).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, delete, insert, select
from sqlalchemy.engine import Engine

FIXTURES = Path(__file__).parent / "upgrade_fixtures"


def dump(engine: Engine) -> dict[str, Any]:
    """Every row of every table (alembic_version included), ordered by primary key."""
    meta = MetaData()
    meta.reflect(engine)
    tables: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name in sorted(meta.tables):
            table = meta.tables[name]
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*order)).mappings().all()
            tables[name] = [dict(row) for row in rows]
    return tables


def load(engine: Engine, data: dict[str, Any]) -> None:
    """Migrate an empty database to ``data['revision']`` and insert its rows as stored."""
    from interlock._internal.store.migrate import upgrade

    upgrade(engine, data["revision"])
    meta = MetaData()
    meta.reflect(engine)
    filled = [t for t in meta.sorted_tables if t.name != "alembic_version" and data["tables"].get(t.name)]
    with engine.begin() as conn:
        # Rows the migrations seed themselves (the audit head) were in the stored database too.
        for table in reversed(filled):
            conn.execute(delete(table))
        for table in filled:  # parents before children (foreign keys)
            conn.execute(insert(table), data["tables"][table.name])


def _fill(url: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import Harness  # type: ignore[import-not-found]
    from interlock._internal.audit.checkpoints import write_checkpoint
    from interlock._internal.audit.keys import AuditKey

    h = Harness(url)
    key = AuditKey.from_settings(h.il.settings.audit)
    alice, _ = h.il.operators.create("alice", roles=["approver"], workflows=None, actor="fixture")
    bob, _ = h.il.operators.create("bob", roles=["approver"], workflows=None, actor="fixture")
    run = h.run()
    for tool, args in [
        ("tickets.search", {"query": "refund", "limit": 5}),
        ("tickets.get", {"ticket_id": "T-1002"}),
        ("customers.get", {"customer_id": "C-1002"}),
        ("replies.draft", {"ticket_id": "T-1002", "body": "A refund is on its way."}),
        ("tickets.update", {"ticket_id": "T-1002", "fields": {"priority": "high"}}),
        ("payments.refund", {"ticket_id": "T-1002", "amount": 30, "currency": "USD", "reason": "late"}),
    ]:
        h.act(run, tool, args)
    h.act(
        run, "tickets.update", {"ticket_id": "T-1006", "fields": {"group": "billing"}}, idempotency_key="fx-1"
    )
    write_checkpoint(h.il.engine, key)
    pending = [
        h.act(
            run,
            "payments.refund",
            {"ticket_id": ticket, "amount": amount, "currency": "USD", "reason": "damaged"},
            reasoning="photos attached",
        ).approval_id
        for ticket, amount in (("T-1003", 120), ("T-1004", 200), ("T-1005", 80))
    ]
    h.il.approvals.decide(pending[0], operator=alice.principal(), approve=True, comment="ok")
    h.il.approvals.decide(pending[1], operator=bob.principal(), approve=False, comment="no")
    h.act(run, "customers.delete", {"customer_id": "C-1003"})
    h.act(run, "tickets.update", {"ticket_id": "T-1002", "fields": {"priority": "low"}, "assignee": "x"})
    report_run = h.run("reporter")
    h.act(report_run, "tickets.search", {"query": "late"}, agent="reporter")
    h.il.pause("agent", "reporter", actor="fixture", reason="weekly report done")
    unsure = h.run()  # a low-confidence write hands this run to a person
    h.act(unsure, "tickets.update", {"ticket_id": "T-1007", "fields": {"status": "pending"}}, confidence=0.2)
    write_checkpoint(h.il.engine, key)
    assert h.il.verify_audit().ok
    h.close()


def main() -> None:
    from alembic.runtime.migration import MigrationContext

    from interlock import __version__
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine

    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ["SUPPORT_DESK_DB"] = str(Path(tmp) / "desk.db")
        url = f"sqlite:///{Path(tmp) / 'interlock.db'}"
        _fill(url)
        engine = make_engine(DatabaseSettings(url=url))
        with engine.connect() as conn:  # plain Alembic: the script runs on the code of the release
            revision = MigrationContext.configure(conn).get_current_revision()
        data = {"revision": revision, "made_by": f"interlock {__version__}", "tables": dump(engine)}
        engine.dispose()
    out = FIXTURES / f"schema-{revision}.json"
    out.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = sum(len(v) for v in data["tables"].values())
    print(f"wrote {out.name}: {rows} rows in {len(data['tables'])} tables at revision {revision}")


if __name__ == "__main__":
    main()
