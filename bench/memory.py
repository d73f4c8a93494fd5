"""Memory of one serving process, to size Kubernetes resource requests and limits (deploy/).

Starts ``interlock serve`` with the reference workflow (support-triage) on 127.0.0.1, on a fresh
SQLite file and, when it answers, on PostgreSQL (``INTERLOCK_TEST_PG``, a schema of its own), and
reads the process's resident memory from ``/proc``: after it is ready, after a warm-up, and after
``--actions`` more actions from ``--concurrency`` agents' runs at once (reads, drafts, updates,
refunds that run and refunds that wait for approval, denied deletes), with the console and
``/metrics`` fetched too. Prints RSS and the peak (VmHWM) in MiB for each engine.

Run: python bench/memory.py [--actions 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "support-triage" / "workflow.yaml"
PG = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("tickets.search", {"query": "refund", "limit": 5}),
    ("tickets.get", {"ticket_id": "T-1002"}),
    ("customers.get", {"customer_id": "C-1002"}),
    ("replies.draft", {"ticket_id": "T-1002", "body": "On its way."}),
    ("tickets.update", {"ticket_id": "T-1002", "fields": {"priority": "high"}}),
    ("payments.refund", {"ticket_id": "T-1002", "amount": 5, "currency": "USD", "reason": "late"}),
    ("payments.refund", {"ticket_id": "T-1003", "amount": 120, "currency": "USD", "reason": "broken"}),
    ("customers.delete", {"customer_id": "C-1003"}),
]


def memory(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def pg_schema_url() -> tuple[str, str] | None:
    try:
        import psycopg

        raw = PG.replace("postgresql+psycopg://", "postgresql://")
        schema = "bench_" + uuid.uuid4().hex[:10]
        with psycopg.connect(raw, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{PG}?options=-csearch_path%3D{schema}", schema
    except Exception:
        return None


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def measure(name: str, db_url: str, *, actions: int, concurrency: int, workdir: Path) -> dict[str, float]:
    interlock = str(Path(sys.executable).with_name("interlock"))
    env = {**os.environ, "SUPPORT_DESK_DB": str(workdir / f"desk-{uuid.uuid4().hex[:6]}.db")}
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (workdir / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            interlock,
            "serve",
            "--manifest",
            str(MANIFEST),
            "--db",
            db_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(600):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            ready = memory(proc.pid)
            import json

            out = subprocess.run(
                [
                    interlock,
                    "agents",
                    "create",
                    "triage-bot",
                    "--workflow",
                    "support-triage",
                    "--env",
                    "production",
                    "--db",
                    db_url,
                    "--json",
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            c = json.loads(out.stdout)
            token = http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": c["client_id"],
                    "client_secret": c["client_secret"],
                },
            ).json()["access_token"]
            tokens = [token] * concurrency  # the workflow's agent, several runs at once

            codes: Counter[int] = Counter()

            def agent(token: str, n: int) -> None:
                auth = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=base, timeout=60, headers=auth) as c:
                    run = c.post("/v1/runs", json={"trigger": {"bench": "memory"}}).json()["id"]
                    for i in range(n):
                        if i and i % 30 == 0:  # stay under the run's step cap
                            run = c.post("/v1/runs", json={"trigger": {"bench": "memory"}}).json()["id"]
                        tool, args = ACTIONS[i % len(ACTIONS)]
                        codes[
                            c.post(
                                f"/v1/runs/{run}/actions", json={"tool": tool, "arguments": args}
                            ).status_code
                        ] += 1

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(agent, tokens, [max(1, actions // 10 // concurrency)] * concurrency))
            warm = memory(proc.pid)
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(agent, tokens, [actions // concurrency] * concurrency))
            http.get("/metrics")
            http.get("/ui/login")
            loaded = memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    print(f"  {name}: HTTP statuses of the actions: {dict(sorted(codes.items()))}")
    return {"ready": ready[0], "warm": warm[0], "loaded": loaded[0], "peak": loaded[1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        engines = [("sqlite", f"sqlite:///{Path(tmp) / 'interlock.db'}", None)]
        pg = pg_schema_url()
        if pg:
            engines.append(("postgresql", pg[0], pg[1]))
        else:
            print("PostgreSQL did not answer; measuring SQLite only")
        print(f"{'engine':<11} {'ready':>8} {'warm':>8} {'loaded':>8} {'peak':>8}   (RSS in MiB)")
        for name, url, schema in engines:
            try:
                m = measure(name, url, actions=args.actions, concurrency=args.concurrency, workdir=Path(tmp))
            finally:
                if schema:
                    drop_schema(schema)
            print(f"{name:<11} {m['ready']:>8.1f} {m['warm']:>8.1f} {m['loaded']:>8.1f} {m['peak']:>8.1f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
