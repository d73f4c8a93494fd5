"""Governed REST actions per second with `interlock serve --workers 1` and `--workers 2`, on SQLite
and on PostgreSQL, side by side in one run.

Starts one server per configuration (each on its own fresh database, all on 127.0.0.1), then runs
rounds of fixed length against each in turn, so that other work on the machine weighs on every
configuration alike: concurrency 16 (one keep-alive connection and one run each) of the no-op
Python read tool of bench/gateway.py (loop detection off), the audit appended in each action's
transaction. Prints each round, then per configuration the median rate, the server's CPU per
action (supervisor and workers together) and the latency, and the ratio of two workers to one.
Targets with two workers: at least 1,200/s on SQLite and 700/s on PostgreSQL.

With ``--baseline DIR``, every configuration also runs from another checkout (its ``src``), in
the same rotation, and the ratio of this tree to it is printed (the median of per-round ratios).

PostgreSQL comes from ``INTERLOCK_TEST_PG`` (default: the local ``test`` database, as for the
tests); each server works in a throwaway schema, dropped afterwards. When PostgreSQL does not
answer, only SQLite is measured.

Run: python bench/workers.py [--rounds 5] [--seconds 4] [--concurrency 16] [--engines sqlite,postgres]
     [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from server_cost import SERVE, SETUP  # the server's own tree sets up its database and token

from gateway import LOOKUP, MANIFEST, RawHttp, free_port, loadavg, pct, process

PG_BASE = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGETS = {"sqlite": 1200, "postgres": 700}
RUN_STEPS = 1000
ROOT = Path(__file__).resolve().parent.parent


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (the workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    try:
        import psycopg

        raw = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
        schema = "bench_" + uuid.uuid4().hex[:12]
        with psycopg.connect(raw, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        print(f"PostgreSQL not measured: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        yield None
        return
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Server:
    """One `interlock serve --workers N` from the tree ``src``, on its own database, with an agent
    token ready."""

    def __init__(self, label: str, d: Path, db_url: str, workers: int, src: Path) -> None:
        self.label, self.workers, self.port = label, workers, free_port()
        d.mkdir()
        self.dir = d
        self.manifest = d / "workflow.yaml"
        self.manifest.write_text(MANIFEST.format(python=json.dumps(sys.executable), tool_port=free_port()))
        (d / "noop_tool.py").write_text("def noop(ticket_id, limit=1):\n    return {'ok': True}\n")
        self.db_url = db_url
        self.env = {**os.environ, "PYTHONPATH": str(src), "INTERLOCK_IDENTITY__TOKEN_TTL_S": "86400"}
        setup = subprocess.run(
            [sys.executable, "-c", SETUP, db_url, str(self.manifest)],
            env=self.env,
            cwd=d,
            check=True,
            capture_output=True,
            text=True,
        )
        self.token = setup.stdout.strip().splitlines()[-1]
        self.cmd = [
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--manifest",
            str(self.manifest),
            "--db",
            db_url,
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ]


async def one_round(
    server: Server, pid: int, *, concurrency: int, seconds: float
) -> tuple[float, float, list[float]]:
    body = {"tool": "noop.read", "arguments": LOOKUP}
    conns = [RawHttp("127.0.0.1", server.port, server.token) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))
    latencies: list[float] = []

    async def worker(conn: RawHttp, stop_at: float) -> None:
        status, answer = await conn.send(conn.prepare("/v1/runs", {"trigger": {"bench": "workers"}}))
        assert status == 201, answer
        request = conn.prepare(f"/v1/runs/{json.loads(answer)['id']}/actions", body)
        done = 0
        while time.perf_counter() < stop_at:
            if done and done % RUN_STEPS == 0:
                status, answer = await conn.send(conn.prepare("/v1/runs", {}))
                request = conn.prepare(f"/v1/runs/{json.loads(answer)['id']}/actions", body)
            t0 = time.perf_counter()
            status, answer = await conn.send(request)
            latencies.append(time.perf_counter() - t0)
            assert status == 200, answer
            if done == 0:
                assert json.loads(answer)["status"] == "executed", answer
            done += 1

    try:
        cpu0 = tree_cpu_seconds(pid)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, t0 + seconds) for c in conns))
        elapsed = time.perf_counter() - t0
        cpu = (tree_cpu_seconds(pid) - cpu0) / max(1, len(latencies))
    finally:
        for c in conns:
            c.close()
    return len(latencies) / elapsed, cpu, latencies


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (its src is used)")
    opts = parser.parse_args()
    engines = opts.engines.split(",")
    trees = [("", ROOT / "src")]
    if opts.baseline is not None:
        trees = [(" before", opts.baseline.resolve() / "src"), (" after", ROOT / "src")]

    import interlock

    print(f"load average at start: {loadavg()}")
    print(f"interlock {interlock.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        d = Path(tmp)
        servers: list[tuple[Server, int]] = []
        measured: list[str] = []
        for engine in engines:
            for n, (side, src) in ((n, tree) for n in (1, 2) for tree in trees):
                name = f"{engine}-{n}{side.replace(' ', '-')}"
                if engine == "postgres":  # one schema per server
                    db = stack.enter_context(postgres_schema())
                    if db is None:
                        break
                else:
                    db = f"sqlite:///{d / f'{name}.db'}"
                if engine not in measured:
                    measured.append(engine)
                server = Server(f"{engine}, --workers {n}{side}", d / name, db, n, src)
                pid = stack.enter_context(
                    process(
                        server.cmd,
                        ready_url=f"http://127.0.0.1:{server.port}/readyz",
                        log=server.dir / "serve.log",
                        env=server.env,
                        cwd=server.dir,
                        timeout=600,  # workers start slowly on a busy machine
                    )
                )
                servers.append((server, pid))
        print(
            f"concurrency {opts.concurrency}, {opts.rounds} rounds of {opts.seconds:g} s per server, rotating"
        )
        for server, pid in servers:  # warm-up: connections, caches, the workers' first requests
            asyncio.run(one_round(server, pid, concurrency=opts.concurrency, seconds=1.0))
        rates: dict[str, list[float]] = {s.label: [] for s, _ in servers}
        cpus: dict[str, list[float]] = {s.label: [] for s, _ in servers}
        lat: dict[str, list[float]] = {s.label: [] for s, _ in servers}
        for k in range(opts.rounds):
            order = servers if k % 2 == 0 else list(reversed(servers))
            for server, pid in order:
                rate, cpu, latencies = asyncio.run(
                    one_round(server, pid, concurrency=opts.concurrency, seconds=opts.seconds)
                )
                rates[server.label].append(rate)
                cpus[server.label].append(cpu)
                lat[server.label].extend(latencies)
                print(
                    f"  round {k + 1}  {server.label:<32} {rate:7.1f} actions/s   CPU {cpu * 1e3:.2f} ms/action"
                )
        print("\nmedians of rounds")
        for server, _ in servers:
            label = server.label
            ms = [x * 1e3 for x in lat[label]]
            print(
                f"  {label:<32} {statistics.median(rates[label]):7.1f} actions/s   "
                f"server CPU {statistics.median(cpus[label]) * 1e3:5.2f} ms/action   "
                f"latency median {statistics.median(ms):6.1f} ms, p99 {pct(ms, 0.99):6.1f} ms"
            )
        for engine in measured:
            for side, _ in trees:
                one = statistics.median(rates[f"{engine}, --workers 1{side}"])
                two = statistics.median(rates[f"{engine}, --workers 2{side}"])
                verdict = "met" if two >= TARGETS[engine] else "MISSED"
                print(
                    f"  {engine}{side}: two workers / one = {two / one:.2f}x; "
                    f"target >= {TARGETS[engine]}/s with two workers: {verdict}"
                )
            if len(trees) == 2:
                for n in (1, 2):
                    before, after = (rates[f"{engine}, --workers {n}{side}"] for side, _ in trees)
                    ratio = statistics.median(a / b for a, b in zip(after, before, strict=True))
                    print(f"  {engine}, --workers {n}: after / before = {ratio:.2f}x (median of rounds)")
    print(f"\nload average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
