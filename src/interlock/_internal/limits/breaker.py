"""Circuit breakers: stop calling an upstream that keeps failing, and try it again later.

State is in-process: each server replica learns on its own that an upstream is down. That is
deliberate; a breaker protects the upstream and the caller's latency, and a few extra failed calls
per replica cost less than a database round trip on every call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from interlock.exceptions import ConfigError, UpstreamError

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


__all__ = ["CircuitBreakerRegistry", "Permit", "State"]
