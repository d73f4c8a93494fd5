"""A run's budget holds over HTTP when two `interlock serve` processes share one database.

The reference workflow, with refunds priced at 0.10 USD and a per-run budget of 5 USD: 200 refunds
sent at once to one run, half to each server, must execute exactly 50 times. The rest are refused
by the budget (429 ``budget_exceeded``) or, once the run has been stopped by it, as no longer
active (403 ``run_not_active``). The run's cost is then exactly 5 USD and the help desk, which
both servers write to, holds exactly 50 refunds.

On PostgreSQL (the deployment for several replicas) and on one SQLite file, which WAL lets
several processes share.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import SUPPORT_TRIAGE, Harness
from servers import ServeProcess as Server

pytestmark = pytest.mark.e2e

REFUNDS = 200
EXECUTABLE = 50  # 5 USD / 0.10 USD


def priced_refunds_manifest(folder: Path) -> Path:
    """The reference manifest with refunds at 0.10 USD and a 5 USD run budget, written next to a
    copy of its tools (``support_desk.py``) and golden set so that `interlock serve` can load it.
    Loop detection (``max_repeats``) is left off: only the budget may refuse a refund here."""
    folder.mkdir()
    for name in ("support_desk.py", "golden.yaml"):
        shutil.copy(SUPPORT_TRIAGE.parent / name, folder / name)
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    refund = next(t for t in data["tools"] if t["name"] == "payments.refund")
    refund["cost_usd"] = 0.1
    data["budgets"]["per_run"] = {"max_cost_usd": 5.0, "max_steps": 10_000, "max_tool_calls": 10_000}
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def two_servers(db_url: str, tmp_path: Path) -> Iterator[tuple[Harness, Server, Server]]:
    manifest = priced_refunds_manifest(tmp_path / "workflow")
    harness = Harness(db_url, manifest)  # migrates, loads the variant, creates both agents
    servers = [
        Server(name, manifest=manifest, db_url=db_url, workdir=tmp_path, max_connections=REFUNDS)
        for name in ("a", "b")
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield harness, servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()
        harness.close()


def refund(i: int) -> dict[str, Any]:
    # Amounts up to 40 (allowed without approval); each reason differs, so no two calls repeat.
    return {
        "tool": "payments.refund",
        "arguments": {
            "ticket_id": f"T-{1001 + i % 20}",
            "amount": 1 + i % 40,
            "currency": "USD",
            "reason": f"case {i}",
        },
    }


def test_200_refunds_across_two_servers_spend_exactly_the_budget(
    two_servers: tuple[Harness, Server, Server], desk: Any
) -> None:
    harness, a, b = two_servers
    agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
    started = a.http.post("/v1/runs", headers=agent, json={"trigger": {"ticket": "T-1001"}})
    assert started.status_code == 201, started.text
    run = started.json()["id"]

    answers: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * REFUNDS
    barrier = threading.Barrier(REFUNDS)

    def send(i: int) -> None:
        server = a if i % 2 == 0 else b
        barrier.wait()
        try:
            answers[i] = server.http.post(f"/v1/runs/{run}/actions", headers=agent, json=refund(i))
        except BaseException as exc:  # reported below with the servers' logs
            answers[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(REFUNDS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    failures = [x for x in answers if not isinstance(x, httpx.Response)]
    assert not failures, (failures[:3], a.log_tail(), b.log_tail())
    responses = [x for x in answers if isinstance(x, httpx.Response)]
    statuses = Counter(r.status_code for r in responses)
    assert statuses[200] == EXECUTABLE, (statuses, a.log_tail(), b.log_tail())
    assert set(statuses) <= {200, 403, 429}, [
        r.text for r in responses if r.status_code not in (200, 403, 429)
    ]
    assert statuses[429] > 0, statuses  # the budget itself refused some, not only the stopped run
    for response in responses:
        if response.status_code == 200:
            assert response.json()["status"] == "executed"
            continue
        codes = [r["code"] for r in response.json()["error"]["reasons"]]
        expected = "budget_exceeded" if response.status_code == 429 else "run_not_active"
        assert codes == [expected], response.text

    # The run's account, read back through either server and from the database, is exactly 5 USD.
    for server in (a, b):
        view = server.http.get(f"/v1/runs/{run}", headers=agent)
        assert view.status_code == 200, view.text
        assert view.json()["cost_usd"] == pytest.approx(5.0)
        assert view.json()["state"] == "stopped"
    assert harness.il.get_run(run).cost_usd == pytest.approx(5.0)

    # The system of record agrees: exactly 50 refunds reached the help desk.
    refunds = desk.snapshot()["refunds"]
    assert len(refunds) == EXECUTABLE
    executed = [r.json()["result"] for r in responses if r.status_code == 200]
    assert sorted(x["refund_id"] for x in executed) == sorted(x["refund_id"] for x in refunds)
