"""Leader leases: one process at a time holds a named duty, among the workers of one server and
the replicas sharing its database.

A holder renews its lease while it lives; a lease not renewed by ``expires_at`` (its process died
or hung) may be taken by any other process. Both are one conditional write, the same on SQLite
and PostgreSQL, so two processes never hold the same lease at once by the database's clock of
record: each process's own clock, which replicas are expected to keep in sync (NTP) to well
within a lease's length.

    lease = LeaderLease(engine, "housekeeping", ttl_s=90)
    if lease.hold():          # take it, or renew it if this process holds it already
        ...                   # the duty
    lease.release()           # on shutdown, so another process need not wait for expiry
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable

from sqlalchemy import and_, case, delete, or_, update
from sqlalchemy.engine import Engine

from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, transaction

_l = t.leader_leases


def holder_id() -> str:
    """This process, recognisable in the table: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{secrets.token_hex(4)}"


class LeaderLease:
    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        ttl_s: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.engine = engine
        self.name = name
        self.ttl_s = ttl_s
        self.holder = holder or holder_id()
        self._clock = clock

    def hold(self) -> bool:
        """Take the lease if it is free or expired, or renew it if this process holds it; True
        when this process holds it until at least ``ttl_s`` from now."""
        now = self._clock()
        expires = now + self.ttl_s
        renew = (
            update(_l)
            .where(and_(_l.c.name == self.name, or_(_l.c.holder == self.holder, _l.c.expires_at <= now)))
            .values(
                holder=self.holder,
                acquired_at=case((_l.c.holder == self.holder, _l.c.acquired_at), else_=now),
                expires_at=expires,
            )
        )
        with transaction(self.engine) as conn:
            if conn.execute(renew).rowcount == 1:
                return True
            values = {"name": self.name, "holder": self.holder, "acquired_at": now, "expires_at": expires}
            return insert_ignore(conn, _l, values)

    def release(self) -> None:
        """Give the lease up now if this process holds it (a clean shutdown)."""
        with transaction(self.engine) as conn:
            conn.execute(delete(_l).where(and_(_l.c.name == self.name, _l.c.holder == self.holder)))


__all__ = ["LeaderLease", "holder_id"]
