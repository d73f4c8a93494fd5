"""What one governed REST action costs the server, and PostgreSQL: before and after, in one run.

For each engine (SQLite, PostgreSQL) and each side (this tree, and with ``--baseline DIR`` another
checkout's ``src``), an ``interlock serve`` process of that side on 127.0.0.1 with a no-op Python
read tool. One client posts actions one at a time on a keep-alive connection (concurrency 1, so
the figures are costs, not contention); rounds alternate the sides so that other work on the
machine weighs on both alike. Per action, medians over the rounds:

- **server CPU**: user + system time of the server process (``/proc``), HTTP layer included;
- **PostgreSQL round trips**: the server's connections go through a counting TCP proxy in this
  process; a round trip is a message after which the server's driver waits for PostgreSQL (a
  Sync or a simple Query), so statements pipelined without waiting count once;
- **WAL bytes**: the WAL records of the side's own database (``pg_walinspect`` over the round's
  LSN range, records touching the database's relations plus the commit records of their
  transactions), so other databases on the cluster do not count;
- **backend CPU**: user + system time of the PostgreSQL backends serving the side's database
  (``/proc``; PostgreSQL on this machine).

PostgreSQL comes from ``INTERLOCK_TEST_PG`` (default: the local ``test`` database's server); the
script creates a database per side and drops it. Without PostgreSQL it says so and measures SQLite.

Run: python bench/server_cost.py [--n 300] [--rounds 5] [--baseline DIR] [--only sqlite,postgres]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("INTERLOCK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test").replace(
    "postgresql+psycopg://", "postgresql://"
)

MANIFEST = """
name: bench-cost
version: "1"
owner: bench@example.com
objective: measure what one action costs
success_metric: {name: cost}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [read]}
tools:
  - name: noop.read
    verb: read
    input_schema:
      type: object
      properties: {ticket_id: {type: string}, limit: {type: integer, minimum: 1, maximum: 100}}
      required: [ticket_id]
    upstream: {kind: python, callable: "noop_tool:noop"}
rules:
  allow:
    - {id: reads, verb: read}
"""

# Run by each side's own code: migrate, load the manifest, create its agent ``bot``, print its
# token (bench/workers.py uses it too).
SETUP = """
import sys
from interlock import Interlock, Settings
il = Interlock(Settings(database={"url": sys.argv[1]}, identity={"token_ttl_s": 86400}))
il.migrate()
workflow = il.load_workflow(sys.argv[2]).name
creds = il.agents.create("bot", workflow=workflow, environment="production", actor="bench")
print(il.issue_token(creds.client_id, creds.client_secret).token)
il.close()
"""
SERVE = "from interlock._internal.cli.main import main; main()"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingProxy:
    """A TCP proxy to PostgreSQL that counts round trips: the client's messages after which it
    waits for the server (Sync, ending a batch of extended-protocol messages, or a simple
    Query), read off the wire protocol. Statements sent in a pipeline without waiting count
    once, at their Sync."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.round_trips = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        pending = b""
        started = False  # the untyped startup (and SSL request) messages come first
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if not request:
                    continue
                pending += data
                while True:
                    if not started:
                        if len(pending) < 8 or len(pending) < int.from_bytes(pending[:4], "big"):
                            break
                        started = int.from_bytes(pending[4:8], "big") == 196608  # protocol 3.0
                        pending = pending[int.from_bytes(pending[:4], "big") :]
                        continue
                    if len(pending) < 5 or len(pending) < 1 + int.from_bytes(pending[1:5], "big"):
                        break
                    if pending[:1] in (b"S", b"Q"):
                        with self.lock:
                            self.round_trips += 1
                    pending = pending[1 + int.from_bytes(pending[1:5], "big") :]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


class Pg:
    """A database of its own for one side, and what its backends and WAL did."""

    def __init__(self, name: str) -> None:
        import psycopg

        self.name = name
        self.admin = psycopg.connect(PG, autocommit=True)
        self.admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        self.admin.execute(f'CREATE DATABASE "{name}"')
        base = PG.rsplit("/", 1)[0]
        self.url = f"{base}/{name}"
        self.own = psycopg.connect(self.url, autocommit=True)
        self.own.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        self.oid = self.own.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()[0]
        self.proxy = CountingProxy((self.own.info.host, self.own.info.port))
        self.server_url = f"postgresql://{self.own.info.user}@127.0.0.1:{self.proxy.port}/{name}"

    def mark(self) -> tuple[str, float, int]:
        lsn = self.own.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]
        return str(lsn), self.backend_cpu(), self.proxy.round_trips

    def backend_cpu(self) -> float:
        pids = self.own.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,)
        ).fetchall()
        total = 0.0
        for (pid,) in pids:
            with suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def wal_bytes(self, start: str, end: str) -> int:
        rows = self.own.execute(
            "SELECT xid::text, record_length, block_ref FROM pg_get_wal_records_info(%s, %s)", (start, end)
        ).fetchall()
        needle = f"/{self.oid}/"
        xids = {x for x, _, ref in rows if ref and needle in ref and x != "0"}
        return sum(length for x, length, ref in rows if (ref and needle in ref) or x in xids)

    def close(self) -> None:
        self.proxy.close()
        self.own.close()
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.close()


@contextmanager
def server(src: Path, db_url: str, d: Path) -> Iterator[tuple[int, str, int]]:
    env = {**os.environ, "PYTHONPATH": str(src), "INTERLOCK_IDENTITY__TOKEN_TTL_S": "86400"}
    manifest = d / "workflow.yaml"
    token = (
        subprocess.run(
            [sys.executable, "-c", SETUP, db_url, str(manifest)],
            env=env,
            cwd=d,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    port = free_port()
    log = (d / f"serve-{port}.log").open("wb")
    cmd = [sys.executable, "-c", SERVE, "serve", "--manifest", str(manifest), "--db", db_url]
    cmd += ["--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=d, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(d / log.name).read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc.pid, token, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class Side:
    def __init__(self, label: str, src: Path, engine: str, stack: ExitStack, tmp: Path) -> None:
        self.label = label
        self.engine = engine
        d = tmp / f"{engine}-{label}"
        d.mkdir()
        (d / "workflow.yaml").write_text(MANIFEST)
        (d / "noop_tool.py").write_text("def noop(ticket_id, limit=1):\n    return {'ok': True}\n")
        self.pg: Pg | None = None
        if engine == "postgres":
            self.pg = Pg(f"bench_cost_{label}_{os.getpid()}")
            stack.callback(self.pg.close)
            db_url = self.pg.server_url
        else:
            db_url = f"sqlite:///{d / 'interlock.db'}"
        self.pid, token, port = stack.enter_context(server(src, db_url, d))
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.figures: dict[str, list[float]] = {}

    def post(self, path: str, body: Any) -> dict[str, Any]:
        self.http.request("POST", path, body=json.dumps(body), headers=self.headers)
        response = self.http.getresponse()
        data = json.loads(response.read())
        if response.status >= 300:
            raise RuntimeError(f"{path}: {response.status} {data}")
        return data  # type: ignore[no-any-return]

    def round(self, n: int) -> None:
        self.http.close()  # the server closes idle keep-alive connections while the other side runs
        self.http = http.client.HTTPConnection("127.0.0.1", self.port)
        run = self.post("/v1/runs", {})["id"]
        path = f"/v1/runs/{run}/actions"
        body = {"tool": "noop.read", "arguments": {"ticket_id": "T-1", "limit": 5}}
        for _ in range(20):  # warm: caches, prepared statements, the connection pool
            self.post(path, body)
        mark = self.pg.mark() if self.pg is not None else None
        cpu = cpu_seconds(self.pid)
        for _ in range(n):
            self.post(path, body)
        self.add("server CPU per action, µs", (cpu_seconds(self.pid) - cpu) / n * 1e6)
        if self.pg is not None and mark is not None:
            end = self.pg.mark()
            self.add("PostgreSQL round trips per action", (end[2] - mark[2]) / n)
            self.add("WAL bytes per action", self.pg.wal_bytes(mark[0], end[0]) / n)
            self.add("backend CPU per action, µs", (end[1] - mark[1]) / n * 1e6)

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(value)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300, help="actions per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (its src is used)")
    parser.add_argument("--only", default="sqlite,postgres")
    opts = parser.parse_args()

    engines = [e for e in opts.only.split(",") if e]
    if "postgres" in engines:
        try:
            import psycopg

            psycopg.connect(PG, connect_timeout=3).close()
        except Exception as exc:
            print(f"PostgreSQL not reachable ({exc.__class__.__name__}); measuring SQLite only")
            engines = [e for e in engines if e != "postgres"]
    trees = [("after", ROOT / "src")]
    if opts.baseline is not None:
        trees.insert(0, ("before", opts.baseline.resolve() / "src"))
    print(f"load average at start: {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")
    for engine in engines:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            sides = [Side(label, src, engine, stack, Path(tmp)) for label, src in trees]
            for r in range(opts.rounds):
                for side in sides if r % 2 == 0 else reversed(sides):
                    side.round(opts.n)
            print(f"\n{engine}: {opts.rounds} rounds of {opts.n} sequential actions per side, medians")
            names = list(sides[-1].figures)
            header = f"{'':<36}" + "".join(f"{s.label:>14}" for s in sides)
            print(header + ("       after/before" if len(sides) == 2 else ""))
            for name in names:
                meds = [statistics.median(s.figures[name]) for s in sides]
                line = f"{name:<36}" + "".join(f"{m:>14.1f}" for m in meds)
                if len(sides) == 2:
                    ratios = [
                        a / b
                        for a, b in zip(sides[1].figures[name], sides[0].figures[name], strict=True)
                        if b
                    ]
                    line += f"   {statistics.median(ratios):>10.2f}x" if ratios else ""
                print(line)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
