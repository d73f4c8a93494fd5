"""Resource locks: while one run changes a record, another run waits or is refused.

A lock belongs to a run (re-entrant within it) and lasts until the run leaves ``running`` or its
hold expires, so a crashed replica cannot hold a record forever.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from interlock._internal.gateway.blocking import waiting_outside
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.store import tables as t
from interlock._internal.store.engine import transaction
from interlock._internal.store.hot import Conn

_l = t.resource_locks


def lock_key(workflow: str, tool: ToolSpec, arguments: dict[str, Any]) -> str | None:
    """``workflow:path=value`` for the tool's lock path, or None when it has no lock or no value."""
    if tool.lock is None:
        return None
    value: Any = arguments
    for part in tool.lock.key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return f"{workflow}:{tool.lock.key}={value}"[:400]


def _try(conn: Connection, key: str, run_id: str, hold_s: float, now: float) -> bool:
    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    stmt = dialect.insert(_l).values(key=key, run_id=run_id, acquired_at=now, expires_at=now + hold_s)
    # Take it when free, when ours already (extend), or when the holder's time ran out.
    stmt = stmt.on_conflict_do_update(
        index_elements=[_l.c.key],
        set_={"run_id": run_id, "acquired_at": now, "expires_at": now + hold_s},
        where=(_l.c.run_id == run_id) | (_l.c.expires_at < now),
    ).returning(_l.c.key)
    return conn.execute(stmt).first() is not None


def acquire(engine: Engine, key: str, *, run_id: str, hold_s: float, wait_s: float) -> bool:
    """True once the lock is the run's; False after ``wait_s`` of another run holding it."""
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        with transaction(engine) as conn:
            if _try(conn, key, run_id, hold_s, time.time()):
                return True
        if time.monotonic() >= deadline:
            return False
        with waiting_outside():  # another run holds the record: let other actions through meanwhile
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.25)


def release_run(conn: Conn, run_id: str) -> None:
    conn.execute(delete(_l).where(_l.c.run_id == run_id))
