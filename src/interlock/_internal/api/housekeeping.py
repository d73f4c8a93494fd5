"""What a server does besides answering requests: webhooks and notifications, approval expiry,
recovery of calls whose process died (expired leases become "outcome unknown" for a person), audit
checkpoints.

One process runs the periodic jobs at a time: the holder of the ``housekeeping`` leader lease
(:mod:`interlock._internal.store.leases`), whichever worker of whichever replica took it first; when
it stops (or dies and its lease expires, after three periods) another takes over. Election saves
work rather than guarding correctness: each job is a conditional write that only one process wins,
so two holders for a moment (a tick longer than the lease) do no harm. The webhook and
notification workers run in every process, each delivery claimed by one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.concurrency import run_in_threadpool

from interlock._internal.audit.checkpoints import maybe_checkpoint
from interlock._internal.audit.keys import AuditKey
from interlock._internal.audit.witness import witnesses_from_settings
from interlock._internal.gateway.cache import purge_expired as purge_cache
from interlock._internal.gateway.recovery import recover_expired
from interlock._internal.runs.retention import purge_payloads
from interlock._internal.service import Interlock
from interlock._internal.store.leases import LeaderLease

log = logging.getLogger("interlock.housekeeping")

LEASE = "housekeeping"


def housekeeping(
    interlock: Interlock,
    *,
    every_s: float | None = None,
    retention_every_s: float = 3600.0,
    lease_s: float | None = None,
    on_tick: Callable[[], None] | None = None,
) -> Callable[[], AbstractAsyncContextManager[None]]:
    """A lifespan hook: start the webhook and notification workers, then every ``every_s``
    (default: the setting ``recovery.housekeeping_every_s``) turn expired leases into
    outcome-unknown handoffs (and drop expired cached answers), expire due approvals, run
    approved actions a lifted pause was holding (or whose claim lapsed), write a signed audit
    checkpoint when enough has happened since the last one (published to the configured
    witnesses), and forget token failures long past; every ``retention_every_s``, purge
    payloads older than each manifest's ``retention_days``. Only the holder of the housekeeping
    lease runs them; the lease lasts ``lease_s`` (default: three periods) unless renewed.
    ``on_tick`` is called on each tick this process runs the jobs (for tests)."""
    period = every_s if every_s is not None else interlock.settings.recovery.housekeeping_every_s

    @asynccontextmanager
    async def hook() -> AsyncIterator[None]:
        await run_in_threadpool(interlock.approvals.start)
        await run_in_threadpool(interlock.notifications.start)
        key = AuditKey.from_settings(interlock.settings.audit)
        witnesses = witnesses_from_settings(interlock.settings.audit)
        retention_due = [0.0]

        def retention() -> None:
            # Every replica may run it: a purge skips what is already purged and records an
            # audit event only when it changed something.
            now = time.time()
            if now < retention_due[0]:
                return
            retention_due[0] = now + retention_every_s
            purge_payloads(interlock.engine, actor="interlock:retention", now=now)

        lease = LeaderLease(interlock.engine, LEASE, ttl_s=lease_s or 3 * period)

        def tick() -> None:
            try:
                if not lease.hold():
                    return  # another process holds it
            except Exception:
                log.warning("housekeeping could not take its lease", exc_info=True)
                return
            if on_tick is not None:
                on_tick()
            jobs = (
                lambda: recover_expired(interlock.engine, runtimes=interlock.runtime),
                lambda: purge_cache(interlock.engine),
                interlock.approvals.expire_due,
                # Approved actions held by a pause lifted elsewhere (another replica, a script).
                interlock.approvals.resume_held,
                lambda: maybe_checkpoint(interlock.engine, key, witnesses=witnesses),
                retention,
                interlock.token_backoff.prune,
            )
            for job in jobs:
                try:
                    job()
                except Exception:  # one failing job must not stop the others, nor the loop
                    log.warning("housekeeping job failed", exc_info=True)

        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                await run_in_threadpool(tick)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            try:
                # Hand over at once rather than after the lease expires.
                await run_in_threadpool(lease.release)
            except Exception:
                log.warning("housekeeping could not release its lease", exc_info=True)

    return hook
