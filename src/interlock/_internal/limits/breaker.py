"""Circuit breakers: stop calling an upstream that keeps failing, and try it again later.

:class:`CircuitBreakerRegistry` keeps its state in the process (embedded use, tests).
:class:`SharedCircuitBreakers` keeps it in the database, so every replica sees the same breaker:
failures from all replicas count together, exactly one replica opens it (and reports it once, as
``breaker.opened``), and exactly one replica gets the half-open trial call. Its hot path pays no
write while the upstream answers: the open breakers are read from the database at most every
``refresh_s`` and kept in memory, and only failures, trials and the success that closes a breaker
write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.engine import Engine

from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading, transaction
from interlock.exceptions import ConfigError, UpstreamError

log = logging.getLogger("interlock.breaker")
_B = t.circuit_breakers

State = Literal["closed", "open", "half_open"]


@dataclass
class _Circuit:
    failures: int = 0  # consecutive, while closed
    opened_at: float | None = None
    trial: object | None = None  # the permit of the one call let through while half-open
    trial_started: float = 0.0


class Permit:
    """Leave to make one call. Report its outcome exactly once; later reports are ignored.

    Only the outcome of the upstream itself counts: :meth:`success` for any answer (a 4xx is the
    caller's problem, not the upstream's), :meth:`failure` for no answer, a timeout or a 5xx, and
    :meth:`release` when nothing reached the upstream at all.
    """

    __slots__ = ("_done", "_registry", "key")

    def __init__(self, registry: CircuitBreakerRegistry, key: str) -> None:
        self._registry = registry
        self.key = key
        self._done = False

    def success(self) -> None:
        self._report(True)

    def failure(self) -> None:
        self._report(False)

    def release(self) -> None:
        self._report(None)

    def _report(self, ok: bool | None) -> None:
        if not self._done:
            self._done = True
            self._registry._record(self, ok)


class CircuitBreakerRegistry:
    """One breaker per upstream key (``scheme://host:port``). Thread-safe.

    Closed: calls pass; ``failure_threshold`` consecutive failures open it. Open: calls fail fast
    with ``UpstreamError(code="circuit_open")`` for ``cooldown_s``. Half-open: one trial call is let
    through; its success closes the breaker, its failure opens it for another cool-down. A trial
    that never reports (a crashed worker) gives up its slot after a further ``cooldown_s``.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ConfigError("circuit breaker: failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}

    @staticmethod
    def key_for(url: httpx.URL | str) -> str:
        """The breaker key of a URL: its scheme, host and effective port."""
        url = httpx.URL(url)
        port = url.port or {"http": 80, "https": 443}.get(url.scheme, 0)
        host = url.raw_host.decode("ascii").lower()
        return f"{url.scheme}://[{host}]:{port}" if ":" in host else f"{url.scheme}://{host}:{port}"

    def acquire(self, key: str) -> Permit:
        """A permit for one call, or ``UpstreamError(code="circuit_open")`` while open."""
        with self._lock:
            circuit = self._circuits.setdefault(key, _Circuit())
            if circuit.opened_at is None:
                return Permit(self, key)
            now = self._clock()
            wait = circuit.opened_at + self.cooldown_s - now
            trial_busy = circuit.trial is not None and now - circuit.trial_started < self.cooldown_s
            if wait <= 0 and not trial_busy:
                permit = Permit(self, key)
                circuit.trial, circuit.trial_started = permit, now
                return permit
            if trial_busy:
                wait = max(wait, circuit.trial_started + self.cooldown_s - now)
            failures = circuit.failures
        raise UpstreamError(
            f"circuit open for {key} after {failures} consecutive failures; "
            f"the next trial call is allowed in {max(wait, 0.0):.1f}s",
            code="circuit_open",
            details={"upstream": key, "retry_after": max(wait, 0.0)},
        )

    def state(self, key: str) -> State:
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None or circuit.opened_at is None:
                return "closed"
            return "open" if self._clock() < circuit.opened_at + self.cooldown_s else "half_open"

    def open_count(self) -> int:
        """Breakers open now (half-open ones included: their upstream has not proven itself yet)."""
        with self._lock:
            return sum(1 for c in self._circuits.values() if c.opened_at is not None)

    def reset(self, key: str | None = None) -> None:
        """Close one breaker, or all of them (an operator knows the upstream is back)."""
        with self._lock:
            if key is None:
                self._circuits.clear()
            else:
                self._circuits.pop(key, None)

    def _record(self, permit: Permit, ok: bool | None) -> None:
        with self._lock:
            circuit = self._circuits.setdefault(permit.key, _Circuit())
            is_trial = circuit.trial is permit
            if is_trial:
                circuit.trial = None
            if ok is None:
                return
            if ok:
                # Any answer proves the upstream is back, including one from a call that started
                # before the breaker opened.
                circuit.failures, circuit.opened_at, circuit.trial = 0, None, None
            elif is_trial:
                circuit.failures += 1
                circuit.opened_at = self._clock()
            elif circuit.opened_at is None:
                circuit.failures += 1
                if circuit.failures >= self.failure_threshold:
                    circuit.opened_at = self._clock()
            # A late failure from before the breaker opened changes nothing: it is already open.


class SharedCircuitBreakers(CircuitBreakerRegistry):
    """Breakers whose state lives in the ``circuit_breakers`` table, correct with several writers:
    every transition is a conditional UPDATE that one writer wins. ``on_open(key, failures)`` is
    called by the one replica whose failure opened a breaker (after its commit)."""

    def __init__(
        self,
        engine: Engine,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        refresh_s: float = 0.5,
        on_open: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(failure_threshold=failure_threshold, cooldown_s=cooldown_s, clock=clock)
        self.engine = engine
        self.refresh_s = refresh_s
        self.on_open = on_open
        self._snapshot: dict[str, tuple[int, float | None]] = {}  # key -> (failures, opened_at)
        self._read_at = -1e18

    def _view(self, key: str) -> tuple[int, float | None]:
        now = self._clock()
        if now - self._read_at >= self.refresh_s:
            with reading(self.engine) as conn:
                rows = conn.execute(
                    select(_B.c.key, _B.c.failures, _B.c.opened_at).where(
                        or_(_B.c.failures > 0, _B.c.opened_at.is_not(None))
                    )
                ).all()
            with self._lock:
                self._snapshot = {r[0]: (int(r[1]), r[2]) for r in rows}
                self._read_at = now
        with self._lock:
            return self._snapshot.get(key, (0, None))

    def _forget(self) -> None:
        with self._lock:
            self._read_at = -1e18

    def acquire(self, key: str) -> Permit:
        failures, opened_at = self._view(key)
        if opened_at is None:
            return Permit(self, key)
        now = self._clock()
        wait = opened_at + self.cooldown_s - now
        if wait <= 0:
            with transaction(self.engine) as conn:
                won = conn.execute(
                    update(_B)
                    .where(
                        _B.c.key == key,
                        _B.c.opened_at.is_not(None),
                        _B.c.opened_at <= now - self.cooldown_s,
                        or_(_B.c.trial_until.is_(None), _B.c.trial_until < now),
                    )
                    .values(trial_until=now + self.cooldown_s, updated_at=now)
                ).rowcount
            if won:
                permit = Permit(self, key)
                with self._lock:
                    self._circuits.setdefault(key, _Circuit()).trial = permit
                return permit
            self._forget()  # another replica holds the trial, or closed the breaker
        raise UpstreamError(
            f"circuit open for {key} after {failures} consecutive failures (shared by every replica); "
            f"the next trial call is allowed in {max(wait, 0.0):.1f}s",
            code="circuit_open",
            details={"upstream": key, "retry_after": max(wait, 0.0)},
        )

    def state(self, key: str) -> State:
        self._forget()
        _failures, opened_at = self._view(key)
        if opened_at is None:
            return "closed"
        return "open" if self._clock() < opened_at + self.cooldown_s else "half_open"

    def open_count(self) -> int:
        """Breakers open now, for every replica (they share them)."""
        self._forget()
        self._view("")
        with self._lock:
            return sum(1 for _failures, opened_at in self._snapshot.values() if opened_at is not None)

    def reset(self, key: str | None = None) -> None:
        with transaction(self.engine) as conn:
            stmt = update(_B).values(failures=0, opened_at=None, trial_until=None, updated_at=self._clock())
            conn.execute(stmt if key is None else stmt.where(_B.c.key == key))
        self._forget()

    def _record(self, permit: Permit, ok: bool | None) -> None:
        with self._lock:
            circuit = self._circuits.get(permit.key)
            is_trial = circuit is not None and circuit.trial is permit
            if is_trial and circuit is not None:
                circuit.trial = None
        now = self._clock()
        key = permit.key
        if ok is None:
            if is_trial:
                with transaction(self.engine) as conn:
                    conn.execute(update(_B).where(_B.c.key == key).values(trial_until=None, updated_at=now))
            return
        if ok:
            failures, opened_at = self._view(key)
            if failures or opened_at is not None or is_trial:
                # Any answer proves the upstream is back, whichever replica gets it.
                with transaction(self.engine) as conn:
                    conn.execute(
                        update(_B)
                        .where(_B.c.key == key)
                        .values(failures=0, opened_at=None, trial_until=None, updated_at=now)
                    )
                self._forget()
            return
        opened = False
        with transaction(self.engine) as conn:
            insert_ignore(conn, _B, {"key": key, "failures": 0, "updated_at": now})
            if is_trial:
                conn.execute(
                    update(_B)
                    .where(_B.c.key == key)
                    .values(failures=_B.c.failures + 1, opened_at=now, trial_until=None, updated_at=now)
                )
            else:
                row = conn.execute(
                    update(_B)
                    .where(_B.c.key == key)
                    .values(failures=_B.c.failures + 1, updated_at=now)
                    .returning(_B.c.failures, _B.c.opened_at)
                ).one()
                if row[1] is None and row[0] >= self.failure_threshold:
                    opened = bool(
                        conn.execute(
                            update(_B)
                            .where(_B.c.key == key, _B.c.opened_at.is_(None))
                            .values(opened_at=now, updated_at=now)
                        ).rowcount
                    )
                failures = int(row[0])
        self._forget()
        if opened and self.on_open is not None:
            try:
                self.on_open(key, failures)
            except Exception:  # reporting must not turn the call's failure into another error
                log.warning("breaker.opened could not be reported for %s", key, exc_info=True)


__all__ = ["CircuitBreakerRegistry", "Permit", "SharedCircuitBreakers", "State"]
