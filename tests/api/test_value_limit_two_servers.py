"""A daily value limit holds over HTTP when two `interlock serve` processes share one database.

The reference workflow with one value limit, 1,234 USD of refunds per day: 200 refunds of 12.34
USD sent at once over 20 runs, half to each server, must execute exactly 100 times and move
exactly 1,234 USD. The rest are refused by the limit (429 ``value_limit_exceeded``). On PostgreSQL
and on one SQLite file (WAL lets several processes share it).
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import SUPPORT_TRIAGE, Harness
from servers import ServeProcess as Server

pytestmark = pytest.mark.e2e

REFUNDS = 200
RUNS = 20
AMOUNT = 12.34
CAP = 1234
EXECUTABLE = 100


def capped_manifest(folder: Path) -> Path:
    folder.mkdir()
    for name in ("support_desk.py", "golden.yaml"):
        shutil.copy(SUPPORT_TRIAGE.parent / name, folder / name)
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    data["budgets"]["per_run"] = {"max_steps": 10_000, "max_tool_calls": 10_000}
    data["budgets"]["value_limits"] = [
        {"id": "refunds-day", "tool": "payments.refund", "argument": "amount", "max": CAP, "unit": "USD"}
    ]
    path = folder / "workflow.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def two_servers(db_url: str, tmp_path: Path) -> Iterator[tuple[Harness, Server, Server]]:
    manifest = capped_manifest(tmp_path / "workflow")
    harness = Harness(db_url, manifest)
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


def test_200_refunds_across_two_servers_move_exactly_the_daily_cap(
    two_servers: tuple[Harness, Server, Server], desk: object
) -> None:
    harness, a, b = two_servers
    agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
    runs = []
    for _ in range(RUNS):
        started = a.http.post("/v1/runs", headers=agent, json={"trigger": {"batch": "refunds"}})
        assert started.status_code == 201, started.text
        runs.append(started.json()["id"])

    answers: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * REFUNDS
    barrier = threading.Barrier(REFUNDS)

    def send(i: int) -> None:
        server = a if i % 2 == 0 else b
        body = {
            "tool": "payments.refund",
            "arguments": {
                "ticket_id": f"T-{1001 + i % 20}",
                "amount": AMOUNT,
                "currency": "USD",
                "reason": f"case {i}",
            },
        }
        barrier.wait()
        try:
            answers[i] = server.http.post(f"/v1/runs/{runs[i % RUNS]}/actions", headers=agent, json=body)
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
    assert statuses == {200: EXECUTABLE, 429: REFUNDS - EXECUTABLE}, (statuses, a.log_tail(), b.log_tail())
    for response in responses:
        if response.status_code == 429:
            [reason] = response.json()["error"]["reasons"]
            assert reason["code"] == "value_limit_exceeded"
            assert reason["policy_id"] == "value:refunds-day"
            assert "headroom 0 USD" in reason["message"]
    # The system of record agrees: exactly the cap left the company, to the cent.
    refunds = desk.snapshot()["refunds"]  # type: ignore[attr-defined]
    assert len(refunds) == EXECUTABLE
    assert desk.refunds_total("USD") == pytest.approx(CAP)  # type: ignore[attr-defined]
