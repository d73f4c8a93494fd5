"""Circuit breakers: open after N consecutive failures, fail fast, one trial after the cool-down."""

from __future__ import annotations

import contextlib
import threading

import pytest

from interlock import ConfigError, UpstreamError
from interlock._internal.limits.breaker import CircuitBreakerRegistry

KEY = "https://api.example:443"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(clock: FakeClock) -> CircuitBreakerRegistry:
    return CircuitBreakerRegistry(failure_threshold=3, cooldown_s=30, clock=clock)


def fail(breakers: CircuitBreakerRegistry, times: int = 1) -> None:
    for _ in range(times):
        breakers.acquire(KEY).failure()


def test_opens_after_consecutive_failures_and_fails_fast(breakers, clock) -> None:
    fail(breakers, 2)
    assert breakers.state(KEY) == "closed"
    fail(breakers)
    assert breakers.state(KEY) == "open"
    clock.now += 10
    with pytest.raises(UpstreamError) as err:
        breakers.acquire(KEY)
    assert err.value.code == "circuit_open"
    assert err.value.details["retry_after"] == pytest.approx(20)
    assert KEY in err.value.message


def test_a_success_resets_the_count(breakers) -> None:
    fail(breakers, 2)
    breakers.acquire(KEY).success()
    fail(breakers, 2)
    assert breakers.state(KEY) == "closed"


def test_neutral_outcomes_do_not_count(breakers) -> None:
    for _ in range(10):
        breakers.acquire(KEY).release()
    assert breakers.state(KEY) == "closed"


def test_half_open_lets_one_trial_through_and_success_closes(breakers, clock) -> None:
    fail(breakers, 3)
    clock.now += 30
    assert breakers.state(KEY) == "half_open"
    trial = breakers.acquire(KEY)
    with pytest.raises(UpstreamError, match="circuit open"):
        breakers.acquire(KEY)  # only one trial at a time
    trial.success()
    assert breakers.state(KEY) == "closed"
    breakers.acquire(KEY).success()


def test_failed_trial_reopens_for_another_cool_down(breakers, clock) -> None:
    fail(breakers, 3)
    clock.now += 31
    breakers.acquire(KEY).failure()
    assert breakers.state(KEY) == "open"
    clock.now += 29
    with pytest.raises(UpstreamError):
        breakers.acquire(KEY)
    clock.now += 1
    breakers.acquire(KEY).success()
    assert breakers.state(KEY) == "closed"


def test_released_trial_frees_the_slot_and_a_lost_trial_expires(breakers, clock) -> None:
    fail(breakers, 3)
    clock.now += 30
    breakers.acquire(KEY).release()
    assert breakers.state(KEY) == "half_open"
    lost = breakers.acquire(KEY)  # never reports
    with pytest.raises(UpstreamError):
        breakers.acquire(KEY)
    clock.now += 30
    breakers.acquire(KEY).success()
    lost.failure()  # a report from a forgotten trial changes nothing
    assert breakers.state(KEY) == "closed"


def test_reports_count_once(breakers) -> None:
    permit = breakers.acquire(KEY)
    for _ in range(5):
        permit.failure()
    fail(breakers, 1)
    assert breakers.state(KEY) == "closed"


def test_breakers_are_per_upstream(breakers) -> None:
    fail(breakers, 3)
    other = CircuitBreakerRegistry.key_for("https://other.example/x")
    breakers.acquire(other).success()
    assert breakers.state(other) == "closed"
    breakers.reset(KEY)
    assert breakers.state(KEY) == "closed"


def test_key_is_scheme_host_port() -> None:
    key_for = CircuitBreakerRegistry.key_for
    assert key_for("https://API.example/a?b=1") == "https://api.example:443"
    assert key_for("http://api.example:8080/") == "http://api.example:8080"
    assert key_for("http://[::1]:9/") == "http://[::1]:9"


def test_concurrent_half_open_admits_exactly_one_trial(breakers, clock) -> None:
    fail(breakers, 3)
    clock.now += 30
    admitted: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        with contextlib.suppress(UpstreamError):
            admitted.append(breakers.acquire(KEY))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(admitted) == 1


def test_concurrent_failures_open_exactly_at_the_threshold(clock) -> None:
    breakers = CircuitBreakerRegistry(failure_threshold=50, cooldown_s=30, clock=clock)
    permits = [breakers.acquire(KEY) for _ in range(49)]
    threads = [threading.Thread(target=p.failure) for p in permits]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert breakers.state(KEY) == "closed"
    fail(breakers)
    assert breakers.state(KEY) == "open"


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError):
        CircuitBreakerRegistry(failure_threshold=0)
