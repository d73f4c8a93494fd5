"""Two `interlock serve` processes on one PostgreSQL database behave as one server.

Both replicas share every piece of state through the database: an idempotency key sent to
both executes once, and a pause made on one is seen by the other on the very next action.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import SUPPORT_TRIAGE, Harness
from servers import ServeProcess as Replica

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

WF = "support-triage"


@pytest.fixture
def cluster(pg_url: str, tmp_path: Path) -> Iterator[tuple[Harness, Replica, Replica]]:
    harness = Harness(pg_url)  # migrates, loads the workflow, creates both agents
    replicas = [
        Replica(name, manifest=SUPPORT_TRIAGE, db_url=pg_url, workdir=tmp_path) for name in ("a", "b")
    ]
    try:
        for replica in replicas:
            replica.wait_ready()
        yield harness, replicas[0], replicas[1]
    finally:
        for replica in replicas:
            replica.stop()
        harness.close()


def _refund(amount: float) -> dict[str, Any]:
    return {
        "tool": "payments.refund",
        "arguments": {"ticket_id": "T-1002", "amount": amount, "currency": "USD", "reason": "late delivery"},
    }


def test_idempotency_and_pause_hold_across_replicas(
    cluster: tuple[Harness, Replica, Replica], desk: Any
) -> None:
    harness, a, b = cluster
    agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
    _, op_token = harness.il.operators.create("ops", roles=["owner"], workflows=[WF], actor="test")
    operator = {"Authorization": f"Bearer {op_token}"}

    run = a.http.post("/v1/runs", headers=agent).json()["id"]

    # One key, sent to one replica and then the other: executed once, replayed after.
    first = a.http.post(
        f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "k1"}, json=_refund(30)
    )
    second = b.http.post(
        f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "k1"}, json=_refund(30)
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["replayed"] is False
    assert second.json()["replayed"] is True
    assert second.json()["step_id"] == first.json()["step_id"]
    assert desk.refunds_total() == 30

    # One key, sent to both replicas at the same moment: still one execution.
    barrier = threading.Barrier(2)
    answers: dict[str, httpx.Response] = {}

    def send(replica: Replica) -> None:
        barrier.wait()
        answers[replica.url] = replica.http.post(
            f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "k2"}, json=_refund(40)
        )

    threads = [threading.Thread(target=send, args=(r,)) for r in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    statuses = sorted(r.status_code for r in answers.values())
    assert statuses in ([200, 200], [200, 409]), [r.text for r in answers.values()]
    executed = [r for r in answers.values() if r.status_code == 200 and not r.json()["replayed"]]
    assert len(executed) == 1
    for response in answers.values():
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "idempotency_in_flight"
    retry = b.http.post(
        f"/v1/runs/{run}/actions", headers={**agent, "Idempotency-Key": "k2"}, json=_refund(40)
    )
    assert retry.status_code == 200
    assert retry.json()["replayed"] is True
    assert desk.refunds_total() == 70

    # The kill switch pulled on one replica stops the next action on the other.
    paused = a.http.post(f"/v1/workflows/{WF}/pause", headers=operator, json={"reason": "incident"})
    assert paused.status_code == 200
    denied = b.http.post(f"/v1/runs/{run}/actions", headers=agent, json=_refund(5))
    assert denied.status_code == 403
    assert denied.json()["error"]["reasons"][0]["code"] == "workflow_paused"
    assert b.http.get(f"/v1/workflows/{WF}", headers=operator).json()["paused"] is True
    resumed = b.http.post(f"/v1/workflows/{WF}/resume", headers=operator)
    assert resumed.json()["paused"] is False
    assert a.http.post(f"/v1/runs/{run}/actions", headers=agent, json=_refund(5)).status_code == 200
    assert desk.refunds_total() == 75

    # Either replica shows the whole timeline.
    steps = b.http.get(f"/v1/runs/{run}", headers=agent).json()["steps_detail"]
    assert [s["status"] for s in steps] == ["executed", "executed", "denied", "executed"]


def test_rate_limit_holds_across_replicas(pg_url: str, tmp_path: Path) -> None:
    """Ten tickets.get a minute for the whole workflow: 16 calls split over two replicas at once
    get exactly ten answers and six 429s with Retry-After."""
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    for tool in data["tools"]:
        if tool["name"] == "tickets.get":
            tool["rate_limit"] = {"per_minute": 10}
    data["budgets"]["per_run"].pop("max_repeats", None)
    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(SUPPORT_TRIAGE.parent / "support_desk.py", tmp_path / "support_desk.py")
    shutil.copy(SUPPORT_TRIAGE.parent / "golden.yaml", tmp_path / "golden.yaml")
    harness = Harness(pg_url, manifest)
    replicas = [Replica(name, manifest=manifest, db_url=pg_url, workdir=tmp_path) for name in ("a", "b")]
    try:
        for replica in replicas:
            replica.wait_ready()
        agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
        run = replicas[0].http.post("/v1/runs", headers=agent).json()["id"]
        barrier = threading.Barrier(16)
        answers: list[httpx.Response] = []

        def send(i: int) -> None:
            replica = replicas[i % 2]
            barrier.wait()
            answers.append(
                replica.http.post(
                    f"/v1/runs/{run}/actions",
                    headers=agent,
                    json={"tool": "tickets.get", "arguments": {"ticket_id": f"T-{1001 + i}"}},
                )
            )

        threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 10 + [429] * 6, [r.text for r in answers if r.status_code not in (200, 429)]
        for response in answers:
            if response.status_code == 429:
                assert response.json()["error"]["reasons"][0]["code"] == "rate_limited"
                assert 0 < float(response.headers["Retry-After"]) <= 60
    finally:
        for replica in replicas:
            replica.stop()
        harness.close()
