"""Circuit breakers shared by replicas: state in the database, correct with several writers.

Two registries on one database stand for two replicas. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from interlock import UpstreamError
from interlock._internal.audit.chain import iter_events
from interlock._internal.limits.breaker import SharedCircuitBreakers

KEY = "https://api.example:443"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def replicas(
    engine: Engine, clock: Clock, opened: list[tuple[str, int]]
) -> tuple[SharedCircuitBreakers, ...]:
    return tuple(
        SharedCircuitBreakers(
            engine,
            failure_threshold=4,
            cooldown_s=30,
            refresh_s=0,
            clock=clock,
            on_open=lambda key, n: opened.append((key, n)),
        )
        for _ in range(2)
    )


def test_failures_from_every_replica_open_it_once_for_all(engine: Engine) -> None:
    clock, opened = Clock(), []
    a, b = replicas(engine, clock, opened)
    a.acquire(KEY).failure()
    b.acquire(KEY).failure()
    a.acquire(KEY).failure()
    assert a.state(KEY) == b.state(KEY) == "closed"
    b.acquire(KEY).failure()
    assert opened == [(KEY, 4)]
    for replica in (a, b):
        with pytest.raises(UpstreamError) as err:
            replica.acquire(KEY)
        assert err.value.code == "circuit_open"
    # A success on either replica closes it for both.
    clock.now += 31
    trial = a.acquire(KEY)
    with pytest.raises(UpstreamError):
        b.acquire(KEY)  # one trial for all replicas
    trial.success()
    assert b.state(KEY) == "closed"
    b.acquire(KEY).success()


def test_a_success_anywhere_resets_the_count(engine: Engine) -> None:
    clock, opened = Clock(), []
    a, b = replicas(engine, clock, opened)
    for _ in range(3):
        a.acquire(KEY).failure()
    b.acquire(KEY).success()
    for _ in range(3):
        a.acquire(KEY).failure()
    assert a.state(KEY) == "closed"
    assert opened == []


def test_concurrent_failures_open_it_exactly_once(engine: Engine) -> None:
    clock, opened = Clock(), []
    a, b = replicas(engine, clock, opened)
    barrier = threading.Barrier(8)

    def fail(replica: SharedCircuitBreakers) -> None:
        barrier.wait()
        with contextlib.suppress(UpstreamError):
            replica.acquire(KEY).failure()

    threads = [threading.Thread(target=fail, args=(a if i % 2 else b,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    assert a.state(KEY) == "open"


def test_concurrent_half_open_admits_one_trial_across_replicas(engine: Engine) -> None:
    clock, opened = Clock(), []
    a, b = replicas(engine, clock, opened)
    for _ in range(4):
        a.acquire(KEY).failure()
    clock.now += 31
    permits: list[Any] = []
    barrier = threading.Barrier(6)

    def try_trial(replica: SharedCircuitBreakers) -> None:
        barrier.wait()
        with contextlib.suppress(UpstreamError):
            permits.append(replica.acquire(KEY))

    threads = [threading.Thread(target=try_trial, args=(a if i % 2 else b,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(permits) == 1
    permits[0].failure()  # a failed trial opens it for another cool-down
    assert b.state(KEY) == "open"


# ---- the manifest may pause the workflow when a breaker opens ------------------------------------

MANIFEST = """
name: flaky
version: "1"
owner: ops@example.com
objective: Call an upstream that is down.
success_metric: {{name: calls}}
environments: [production]
agents:
  - {{id: bot, environment: production, roles: [reader]}}
roles:
  reader: {{verbs: [read]}}
tools:
  - name: status.get
    verb: read
    input_schema: {{type: object, properties: {{}}, additionalProperties: false}}
    upstream: {{kind: http, method: GET, url: "{base}/status", body: none}}
rules:
  allow:
    - {{id: reads, verb: read}}
circuit_breaker: {{on_open: pause_workflow}}
"""


@pytest.fixture
def down() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_open_breaker_pauses_a_workflow_that_asks_for_it(db_url: str, tmp_path: Path, down: str) -> None:
    from conftest import Harness

    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(MANIFEST.format(base=down))
    h = Harness(
        db_url,
        manifest,
        egress={"allow_hosts": [down.removeprefix("http://")], "allow_cidrs": ["127.0.0.1/32"]},
        breaker={"failure_threshold": 3, "cooldown_s": 60},
    )
    try:
        run = h.run("bot")
        statuses = [h.act(run, "status.get", {}, agent="bot").status for _ in range(3)]
        assert statuses == ["failed"] * 3
        assert h.il.is_paused("flaky")
        kinds = [e.kind for e in iter_events(h.il.engine)]
        assert kinds.count("breaker.opened") == 1
        assert kinds.index("breaker.opened") < kinds.index("workflow.paused")
        paused = next(e for e in iter_events(h.il.engine) if e.kind == "workflow.paused")
        assert paused.actor == "interlock"
        assert "circuit breaker" in paused.data["reason"]
        after = h.act(run, "status.get", {}, agent="bot")
        assert after.decision.reason_codes == ["workflow_paused"]
    finally:
        h.close()
