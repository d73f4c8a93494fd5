"""Exactly once under crashes: `kill -9` an `interlock serve` process mid-call, start another.

A real slow upstream on 127.0.0.1 (a payments service that records every refund it makes, by the
Idempotency-Key it was sent, *before* it answers) stands behind an HTTP tool. Leases are made
short through settings (tool timeout 3 s, margin 1 s, housekeeping every 0.3 s) so recovery
happens within seconds; every wait polls for a condition.

- A load of refunds, killed mid-load: after the restart and the leases' expiry no key answers
  ``idempotency_in_flight``; every refund the upstream made has exactly one ``execution.started``
  audit event naming its key; none was made twice (the upstream's own count); the agent's retries
  get definitive answers; `interlock audit verify` passes.
- An approved refund killed mid-call: the approval reaches a final state (``unknown``) with an
  ``outcome_unknown`` handoff, and the agent's retry gets ``outcome_unknown`` instead of a stale 202.

On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from conftest import Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.store import tables as t
from servers import ServeProcess, interlock_command

pytestmark = pytest.mark.e2e

TOOL_TIMEOUT_S = 3
UPSTREAM_DELAY_S = 1.5

MANIFEST = """
name: crash-payments
version: "1"
owner: payments@example.com
objective: Refund customers through a slow payments service.
success_metric: {{name: refunds made once}}
environments: [production]
agents:
  - {{id: refund-bot, environment: production, roles: [refunder]}}
roles:
  refunder: {{verbs: [refund]}}
tools:
  - name: payments.refund
    verb: refund
    traits: [money, external]
    timeout_s: {timeout}
    input_schema:
      type: object
      properties:
        ticket_id: {{type: string}}
        amount: {{type: number, exclusiveMinimum: 0, maximum: 1000}}
      required: [ticket_id, amount]
      additionalProperties: false
    upstream: {{kind: http, method: POST, url: "{base}/refunds"}}
rules:
  allow:
    - {{id: small, tool: payments.refund, when: "amount <= 100"}}
  require_approval:
    - {{id: big, tool: payments.refund, when: "amount > 100"}}
budgets:
  per_run: {{max_steps: 10000, max_tool_calls: 10000}}
approvals:
  allow_self_approval: true
"""


class Payments:
    """The slow upstream: records each refund (its Idempotency-Key) on arrival, then answers late."""

    def __init__(self) -> None:
        self.effects: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with outer.lock:
                    outer.effects.append(self.headers.get("Idempotency-Key") or "")
                    n = len(outer.effects)
                time.sleep(UPSTREAM_DELAY_S)
                data = json.dumps({"refund_id": f"R-{n}", "ticket_id": body.get("ticket_id")}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the caller was killed meanwhile
                    pass

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self) -> int:
        with self.lock:
            return len(self.effects)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def payments() -> Iterator[Payments]:
    p = Payments()
    yield p
    p.close()


@pytest.fixture
def setup(db_url: str, tmp_path: Path, payments: Payments, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(MANIFEST.format(timeout=TOOL_TIMEOUT_S, base=payments.base))
    for name, value in {
        "INTERLOCK_EGRESS__ALLOW_HOSTS": json.dumps([payments.base.removeprefix("http://")]),
        "INTERLOCK_EGRESS__ALLOW_CIDRS": '["127.0.0.1/32"]',
        "INTERLOCK_RECOVERY__LEASE_MARGIN_S": "1",
        "INTERLOCK_RECOVERY__HOUSEKEEPING_EVERY_S": "0.3",
    }.items():
        monkeypatch.setenv(name, value)
    harness = Harness(db_url, manifest)
    servers: list[ServeProcess] = []

    def serve(name: str) -> ServeProcess:
        server = ServeProcess(name, manifest=manifest, db_url=db_url, workdir=tmp_path)
        servers.append(server)
        server.wait_ready()
        return server

    try:
        yield harness, serve
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.stop()
        harness.close()


def kill9(server: ServeProcess) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    server.http.close()


def wait_for(
    condition: Callable[[], bool], what: str, timeout: float = 120, context: Callable[[], Any] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {context()}")


def refund(i: int, amount: int = 10) -> dict[str, Any]:
    return {"tool": "payments.refund", "arguments": {"ticket_id": f"T-{i}", "amount": amount}}


def journal_states(h: Harness) -> Counter[str]:
    with h.il.engine.connect() as conn:
        return Counter(r[0] for r in conn.execute(select(t.executions.c.state)))


def in_flight_keys(h: Harness) -> int:
    with h.il.engine.connect() as conn:
        rows = conn.execute(select(t.idempotency.c.key).where(t.idempotency.c.state == "in_flight")).all()
    return len(rows)


def audit_verify(db_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*interlock_command(), "audit", "verify", "--db", db_url],
        cwd=workdir,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_kill_9_mid_load_then_every_refund_is_made_once_and_accounted_for(
    setup: Any, payments: Payments, db_url: str, tmp_path: Path
) -> None:
    harness, serve = setup
    agent = {"Authorization": f"Bearer {harness.tokens['refund-bot']}"}
    a = serve("a")
    run = a.http.post("/v1/runs", headers=agent, json={}).json()["id"]
    total = 24
    answers: dict[int, Any] = {}

    def send(i: int) -> None:
        try:
            answers[i] = a.http.post(
                f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": f"refund-{i}"}, json=refund(i)
            )
        except httpx.TransportError as exc:  # the server was killed under it
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(total)]
    for thread in threads:
        thread.start()
    # Kill once some refunds were answered and others are in the upstream's hands.
    wait_for(
        lambda: payments.count() >= 6,
        "refunds to reach the upstream",
        context=lambda: ([getattr(r, "text", r) for r in list(answers.values())[:3]], a.log_tail()),
    )
    kill9(a)
    for thread in threads:
        thread.join(timeout=120)
    made_before_restart = payments.count()

    b = serve("b")
    # Housekeeping on the new process turns every expired lease into a final outcome.
    wait_for(
        lambda: in_flight_keys(harness) == 0 and journal_states(harness)["executing"] == 0,
        "no key in flight and no call executing",
    )
    assert payments.count() == made_before_restart  # recovery itself never calls the upstream
    statuses: Counter[int] = Counter()
    for i in range(total):
        retry = b.http.post(
            f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": f"refund-{i}"}, json=refund(i)
        )
        statuses[retry.status_code] += 1
        # Executed (replayed), cut off (a definitive outcome_unknown), or never started before
        # the kill and now refused: the run waits for a person since some calls were cut off.
        assert retry.status_code in (200, 403, 504), retry.text
        code = {200: None, 403: "denied", 504: "outcome_unknown"}[retry.status_code]
        if code is not None:
            assert retry.json()["error"]["code"] == code, retry.text
        if retry.status_code == 403:
            assert retry.json()["action"]["decision"]["reasons"][0]["code"] == "run_not_active"
    assert statuses[504] >= 1, statuses  # the kill did cut calls off

    # The upstream's own count: no refund made twice, and each has exactly one journal event.
    effects = Counter(payments.effects)
    assert all(n == 1 for n in effects.values()), effects
    executing = Counter(
        e.data["upstream_key"] for e in iter_events(harness.il.engine) if e.kind == "execution.started"
    )
    assert set(effects) <= set(executing)
    assert all(executing[key] == 1 for key in effects)
    # Every call is final, and every unknown one was handed to a person.
    states = journal_states(harness)
    assert set(states) <= {"done", "unknown"}, states
    unknown = [e for e in iter_events(harness.il.engine) if e.kind == "action.outcome_unknown"]
    assert len(unknown) == states["unknown"] == statuses[504]
    handoffs = harness.il.handoffs.list(state="open")
    assert {h.reason_code for h in handoffs} == {"outcome_unknown"}
    assert len(handoffs) == states["unknown"]
    verified = audit_verify(db_url, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_kill_9_during_an_approved_refund_ends_in_a_final_state_and_a_handoff(
    setup: Any, payments: Payments, db_url: str, tmp_path: Path
) -> None:
    harness, serve = setup
    agent = {"Authorization": f"Bearer {harness.tokens['refund-bot']}"}
    a = serve("a")
    run = a.http.post("/v1/runs", headers=agent, json={}).json()["id"]
    asked = a.http.post(
        f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "big-1"}, json=refund(1, amount=400)
    )
    assert asked.status_code == 202, asked.text
    approval_id = asked.json()["approval_id"]
    # A person approves on this server, which executes the refund; it dies mid-call.
    _, op_token = harness.il.operators.create(
        "approver-1", roles=["approver", "owner", "admin"], workflows=None, actor="test"
    )

    def approve() -> None:
        # The server is killed while it executes the approved refund: the request breaks.
        with httpx.Client(base_url=str(a.http.base_url), timeout=120) as client, suppress(httpx.HTTPError):
            client.post(
                f"/v1/approvals/{approval_id}/approve",
                headers={"Authorization": f"Bearer {op_token}"},
                json={"comment": "approved for the crash test"},
            )

    threading.Thread(target=approve, daemon=True).start()
    wait_for(lambda: payments.count() == 1, "the approved refund to reach the upstream")
    kill9(a)

    b = serve("b")

    def approval() -> dict[str, Any]:
        with harness.il.engine.connect() as conn:
            return dict(
                conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).mappings().one()
            )

    wait_for(lambda: approval()["execution"] == "unknown", "the approval to reach a final state")
    row = approval()
    assert row["outcome"]["status"] == "outcome_unknown"
    [handoff] = harness.il.handoffs.list(state="open")
    assert handoff.reason_code == "outcome_unknown"
    retry = b.http.post(
        f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "big-1"}, json=refund(1, amount=400)
    )
    assert retry.status_code == 504, retry.text
    assert retry.json()["error"]["code"] == "outcome_unknown"
    assert payments.count() == 1  # never re-run by the machine
    verified = audit_verify(db_url, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
