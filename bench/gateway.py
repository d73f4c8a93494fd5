"""What Interlock adds on the wire: MCP and REST latency against the same call made directly, and
governed actions per second under concurrency. Everything runs on 127.0.0.1, in one run.

(a) MCP ``tools/call`` of mcp-server-time's ``get_current_time``: the official ``mcp`` client over
    streamable HTTP to an ``interlock serve`` process that governs mcp-server-time over stdio,
    against the same client calling its own mcp-server-time over stdio. Target: added median
    latency <= 3 ms.
(b) A REST action (``POST /v1/runs/{id}/actions``) on an HTTP-bound tool, against a direct HTTP
    call to the same tool server (a tiny stdlib HTTP/1.1 server with TCP_NODELAY, in its own
    process).
(c) Governed REST actions per second at concurrency 16 against one server process on SQLite with
    the audit appended in each action's transaction: a no-op Python read tool, loop detection off,
    one run per in-flight slot. Target: >= 800 actions/s.

In (a) and (b) the two sides alternate call by call (the order flips every call) so that noise
from other work on the machine hits both alike; (c) runs in rounds and reports each round and
their median. The machine's load average is printed at the start and the end.

Run: python bench/gateway.py [--n 1000] [--rounds 5] [--seconds 4] [--concurrency 16] [--only abc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

MANIFEST = """
name: bench-gateway
version: "1"
owner: bench@example.com
objective: measure what the gateway adds
success_metric: {{name: latency}}
environments: [production]
agents:
  - {{id: bot, environment: production, roles: [worker]}}
roles:
  worker: {{verbs: [read]}}
mcp_servers:
  - name: time
    command: [{python}, -m, mcp_server_time]
tools:
  - name: get_current_time
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{timezone: {{type: string}}}}
      required: [timezone]
      additionalProperties: false
    upstream: {{kind: mcp, server: time, tool: get_current_time}}
  - name: echo.lookup
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string}}, limit: {{type: integer, minimum: 1, maximum: 100}}}}
      required: [ticket_id]
      additionalProperties: false
    upstream: {{kind: http, method: POST, url: "http://127.0.0.1:{tool_port}/lookup"}}
  - name: noop.read
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string}}, limit: {{type: integer, minimum: 1, maximum: 100}}}}
      required: [ticket_id]
      additionalProperties: false
    upstream: {{kind: python, callable: "noop_tool:noop"}}
rules:
  allow:
    - {{id: reads, verb: read}}
"""

# The tool server for (b): stdlib only, HTTP/1.1 keep-alive, Nagle off so small answers leave at once.
TOOL_SERVER = """
import json, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        args = json.loads(body or b"{}")
        out = json.dumps({"ticket_id": args.get("ticket_id"), "status": "open", "priority": "normal"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""

LOOKUP = {"ticket_id": "T-1001", "limit": 5}
RUN_STEPS = 1000  # a fresh run every this many actions, so no run grows without bound


# ---- figures ------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def show(label: str, seconds: list[float]) -> None:
    ms = [s * 1e3 for s in seconds]
    print(f"  {label:<44} median {statistics.median(ms):7.3f} ms   p99 {pct(ms, 0.99):7.3f} ms   n={len(ms)}")


def added(label: str, through: list[float], direct: list[float], target_ms: float | None = None) -> None:
    extra = (statistics.median(through) - statistics.median(direct)) * 1e3
    extra99 = (pct(through, 0.99) - pct(direct, 0.99)) * 1e3
    ratio = statistics.median(through) / statistics.median(direct)
    verdict = ""
    if target_ms is not None:
        verdict = f"   target <= {target_ms:g} ms: {'met' if extra <= target_ms else 'MISSED'}"
    print(f"  {label:<44} median +{extra:6.3f} ms   p99 +{extra99:6.3f} ms   ratio {ratio:4.1f}x{verdict}")


def pipeline_totals(base: str) -> dict[str, tuple[float, float]]:
    """Per tool, (seconds, count) the server's pipeline has spent so far, from its /metrics."""
    import httpx

    totals: dict[str, list[float]] = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(("interlock_pipeline_seconds_sum{", "interlock_pipeline_seconds_count{")):
            labels, value = line.rsplit(" ", 1)
            tool = labels.split('tool="', 1)[1].split('"', 1)[0]
            slot = 0 if line.startswith("interlock_pipeline_seconds_sum") else 1
            totals.setdefault(tool, [0.0, 0.0])[slot] += float(value)
    return {tool: (v[0], v[1]) for tool, v in totals.items()}


def show_pipeline(base: str, tool: str, before: dict[str, tuple[float, float]]) -> None:
    after = pipeline_totals(base)
    seconds = after.get(tool, (0.0, 0.0))[0] - before.get(tool, (0.0, 0.0))[0]
    count = after.get(tool, (0.0, 0.0))[1] - before.get(tool, (0.0, 0.0))[1]
    if count:
        mean = seconds / count * 1e3
        print(
            f"  {'inside the server: pipeline, mean':<44} {mean:7.3f} ms (upstream call included; /metrics)"
        )


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def interlock_command() -> list[str]:
    script = Path(sys.executable).with_name("interlock")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from interlock._internal.cli.main import main; main()"]


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:] if log.exists() else ''}")


@contextmanager
def process(
    cmd: list[str], *, ready_url: str, log: Path, env: dict[str, str], cwd: Path, timeout: float = 300
) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_http(ready_url, proc, log, timeout=timeout)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class Setup:
    """A working directory with the manifest, the database, the agent and its token."""

    def __init__(self, d: Path, tool_port: int) -> None:
        from interlock import Interlock, Settings

        self.dir = d
        self.manifest = d / "workflow.yaml"
        self.manifest.write_text(MANIFEST.format(python=json.dumps(sys.executable), tool_port=tool_port))
        (d / "noop_tool.py").write_text("def noop(ticket_id, limit=1):\n    return {'ok': True}\n")
        self.db_url = f"sqlite:///{d / 'interlock.db'}"
        self.env = {
            **os.environ,
            "INTERLOCK_EGRESS__ALLOW_CIDRS": '["127.0.0.1/32"]',
            "INTERLOCK_EGRESS__ALLOW_HOSTS": f'["127.0.0.1:{tool_port}"]',
            "INTERLOCK_IDENTITY__TOKEN_TTL_S": "86400",
        }
        settings = Settings(database={"url": self.db_url}, identity={"token_ttl_s": 86400})
        il = Interlock(settings)
        try:
            il.migrate()
            il.load_workflow(self.manifest)
            creds = il.agents.create("bot", workflow="bench-gateway", environment="production", actor="bench")
            self.token = il.issue_token(creds.client_id, creds.client_secret).token
            self.synchronous = settings.database.sqlite_synchronous
        finally:
            il.close()
        self.auth = {"Authorization": f"Bearer {self.token}"}


# ---- (a) MCP ------------------------------------------------------------------------------------


async def bench_mcp(
    servers: list[tuple[str, str, str, dict[str, str], int]], n: int
) -> tuple[dict[str, list[float]], list[float], dict[str, float]]:
    """``servers``: (label, MCP URL, REST API URL, auth headers, server pid) per Interlock server;
    each is called in turn with the direct call, the order rotating every call. Also returns each
    server process's CPU seconds per call (read outside the timed window), a figure that the
    machine's load inflates far less than latency."""
    import httpx
    import httpx2
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    direct_params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server_time"])
    args = {"timezone": "Etc/UTC"}
    async with AsyncExitStack() as stack:
        direct = await stack.enter_async_context(Client(direct_params, cache=None))
        sides: dict[str, Any] = {}
        pids = {label: pid for label, _, _, _, pid in servers}
        for label, url, api, auth, _ in servers:
            rest = await stack.enter_async_context(httpx.AsyncClient(base_url=api, headers=auth, timeout=30))
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=60.0))
            )
            client = await stack.enter_async_context(
                Client(streamable_http_client(url, http_client=http), cache=None)
            )
            sides[label] = (client, rest)

        async def new_run(rest: Any) -> Any:  # the SDK types _meta as RequestParamsMeta
            response = await rest.post("/runs", json={"trigger": {"bench": "mcp"}})
            response.raise_for_status()
            return {"interlock/run_id": response.json()["id"]}

        metas = {label: await new_run(rest) for label, (_, rest) in sides.items()}
        for _ in range(50):  # warm every side: sessions, imports, caches
            await direct.call_tool("get_current_time", args)
            for label, (client, _) in sides.items():
                result = await client.call_tool("get_current_time", args, meta=metas[label])
                assert not result.is_error, result
        through: dict[str, list[float]] = {label: [] for label in sides}
        cpu: dict[str, float] = dict.fromkeys(sides, 0.0)
        plain: list[float] = []
        order = ["direct", *sides]
        for i in range(n):
            if i % RUN_STEPS == 0:
                metas = {label: await new_run(rest) for label, (_, rest) in sides.items()}
            shift = i % len(order)
            for side in order[shift:] + order[:shift]:
                if side == "direct":
                    t0 = time.perf_counter()
                    result = await direct.call_tool("get_current_time", args)
                    plain.append(time.perf_counter() - t0)
                else:
                    c0 = cpu_seconds(pids[side])
                    t0 = time.perf_counter()
                    result = await sides[side][0].call_tool("get_current_time", args, meta=metas[side])
                    through[side].append(time.perf_counter() - t0)
                    cpu[side] += cpu_seconds(pids[side]) - c0
                assert not result.is_error, result
                assert result.structured_content is not None
                assert result.structured_content["timezone"] == "Etc/UTC"
        return through, plain, {label: seconds / n for label, seconds in cpu.items()}


# ---- (b) REST on an HTTP tool -------------------------------------------------------------------


def bench_rest(api: str, tool_url: str, auth: dict[str, str], n: int) -> tuple[list[float], list[float]]:
    import httpx

    body = {"tool": "echo.lookup", "arguments": LOOKUP}
    with (
        httpx.Client(base_url=api, headers=auth, timeout=30) as governed,
        httpx.Client(timeout=30) as direct,
    ):

        def new_run() -> str:
            response = governed.post("/runs", json={"trigger": {"bench": "rest"}})
            response.raise_for_status()
            return str(response.json()["id"])

        run = new_run()
        for _ in range(50):
            direct.post(tool_url, json=LOOKUP).raise_for_status()
            response = governed.post(f"/runs/{run}/actions", json=body)
            assert response.status_code == 200, response.text
        through: list[float] = []
        plain: list[float] = []
        for i in range(n):
            if i % RUN_STEPS == 0:
                run = new_run()
            for side in ("direct", "governed") if i % 2 else ("governed", "direct"):
                t0 = time.perf_counter()
                if side == "direct":
                    response = direct.post(tool_url, json=LOOKUP)
                    plain.append(time.perf_counter() - t0)
                    answer = response.json()
                else:
                    response = governed.post(f"/runs/{run}/actions", json=body)
                    through.append(time.perf_counter() - t0)
                    answer = response.json()["result"]
                assert response.status_code == 200, response.text
                assert answer["ticket_id"] == "T-1001", answer
        return through, plain


# ---- (c) throughput -----------------------------------------------------------------------------


class RawHttp:
    """One keep-alive HTTP/1.1 connection that sends prepared bytes and reads Content-Length bodies.

    The load generator shares the machine's cores with the server, so it should cost as little as
    possible: a general client (httpx) spends about as much CPU per request as the server's HTTP
    layer does, and that CPU would be taken from the server being measured.
    """

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def prepare(self, path: str, body: Any) -> bytes:
        data = json.dumps(body, separators=(",", ":")).encode()
        return f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(data)}\r\n\r\n".encode() + data

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def bench_throughput(
    port: int, token: str, *, concurrency: int, seconds: float, rounds: int, server_pid: int
) -> list[float]:
    body = {"tool": "noop.read", "arguments": LOOKUP}

    async def worker(conn: RawHttp, stop_at: float, latencies: list[float], statuses: dict[int, int]) -> None:
        status, answer = await conn.send(conn.prepare("/v1/runs", {"trigger": {"bench": "throughput"}}))
        assert status == 201, answer
        run = json.loads(answer)["id"]
        request = conn.prepare(f"/v1/runs/{run}/actions", body)
        done = 0
        while time.perf_counter() < stop_at:
            if done and done % RUN_STEPS == 0:
                status, answer = await conn.send(conn.prepare("/v1/runs", {}))
                request = conn.prepare(f"/v1/runs/{json.loads(answer)['id']}/actions", body)
            t0 = time.perf_counter()
            status, answer = await conn.send(request)
            latencies.append(time.perf_counter() - t0)
            if done == 0:
                assert json.loads(answer)["status"] == "executed", answer
            statuses[status] = statuses.get(status, 0) + 1
            done += 1

    conns = [RawHttp("127.0.0.1", port, token) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))

    async def one_round(duration: float) -> tuple[float, list[float], dict[int, int], float, float]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        server_cpu0, client_cpu0 = cpu_seconds(server_pid), time.process_time()
        t0 = time.perf_counter()
        stop_at = t0 + duration
        await asyncio.gather(*(worker(c, stop_at, latencies, statuses) for c in conns))
        elapsed = time.perf_counter() - t0
        n = len(latencies)
        server_cpu = (cpu_seconds(server_pid) - server_cpu0) / n
        client_cpu = (time.process_time() - client_cpu0) / n
        return n / elapsed, latencies, statuses, server_cpu, client_cpu

    try:
        await one_round(1.0)  # warm-up: connections, threads, caches
        rates: list[float] = []
        every: list[float] = []
        cpu: list[float] = []
        for k in range(rounds):
            rate, latencies, statuses, server_cpu, client_cpu = await one_round(seconds)
            rates.append(rate)
            every.extend(latencies)
            cpu.append(server_cpu)
            bad = {code: count for code, count in statuses.items() if code != 200}
            print(
                f"  round {k + 1}: {rate:7.1f} actions/s   server CPU {server_cpu * 1e3:.2f} ms/action   "
                f"load generator CPU {client_cpu * 1e3:.2f} ms/action" + (f"   NOT 200: {bad}" if bad else "")
            )
    finally:
        for c in conns:
            c.close()
    median_rate = statistics.median(rates)
    verdict = "met" if median_rate >= 800 else "MISSED"
    print(f"  {'median of rounds':<44} {median_rate:7.1f} actions/s   target >= 800/s: {verdict}")
    print(f"  {'server CPU per action (median of rounds)':<44} {statistics.median(cpu) * 1e3:7.2f} ms")
    show(f"latency per action at concurrency {concurrency}", every)
    return rates


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="calls per side in (a) and (b)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in (c)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one round in (c)")
    parser.add_argument("--concurrency", type=int, default=16, help="actions in flight in (c)")
    parser.add_argument("--only", default="abc", help="which parts to run, e.g. 'ac'")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of an earlier Interlock: (a) also calls a server run from its src/, side by side",
    )
    opts = parser.parse_args()

    import interlock

    print(f"load average at start: {loadavg()}")
    print(f"interlock {interlock.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tool_port, port = free_port(), free_port()
        setup = Setup(d, tool_port)
        api = f"http://127.0.0.1:{port}/v1"
        tool_url = f"http://127.0.0.1:{tool_port}/lookup"
        serve = [
            *interlock_command(),
            "serve",
            "--manifest",
            str(setup.manifest),
            "--db",
            setup.db_url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        print(f"server: one `interlock serve` process on SQLite (WAL, synchronous={setup.synchronous})")
        with (
            process(
                [sys.executable, "-c", TOOL_SERVER, str(tool_port)],
                ready_url=f"http://127.0.0.1:{tool_port}/",
                log=d / "tool.log",
                env=setup.env,
                cwd=d,
            ),
            process(
                serve, ready_url=f"http://127.0.0.1:{port}/readyz", log=d / "serve.log", env=setup.env, cwd=d
            ) as server_pid,
        ):
            base = f"http://127.0.0.1:{port}"
            if "a" in opts.only:
                before = pipeline_totals(base)
                print(f"\n(a) MCP tools/call get_current_time, {opts.n} calls per side, alternating")
                with ExitStack() as stack:
                    servers = [("this tree", f"{base}/mcp", api, setup.auth, server_pid)]
                    if opts.baseline is not None:
                        servers.append(
                            stack.enter_context(baseline_server(opts.baseline, d / "baseline", tool_port))
                        )
                    through, direct, cpu = asyncio.run(bench_mcp(servers, opts.n))
                show("direct: mcp client -> mcp-server-time (stdio)", direct)
                for label, seconds in through.items():
                    show(f"through Interlock ({label}): client -> /mcp", seconds)
                for label, seconds in through.items():
                    added(f"added by Interlock ({label})", seconds, direct, target_ms=2.0)
                for label, per_call in cpu.items():
                    print(
                        f"  {f'server CPU per call ({label})':<44} {per_call * 1e3:7.3f} ms (user + system)"
                    )
                show_pipeline(base, "get_current_time", before)
            if "b" in opts.only:
                before = pipeline_totals(base)
                print(f"\n(b) REST action on an HTTP tool, {opts.n} calls per side, alternating")
                through, direct = bench_rest(api, tool_url, setup.auth, opts.n)
                show("direct: httpx -> tool server", direct)
                show("through Interlock: POST /v1/runs/{id}/actions", through)
                added("added by Interlock", through, direct)
                show_pipeline(base, "echo.lookup", before)
            if "c" in opts.only:
                before = pipeline_totals(base)
                print(
                    f"\n(c) governed REST actions per second, concurrency {opts.concurrency}, "
                    f"{opts.rounds} rounds of {opts.seconds:g} s (no-op Python read tool)"
                )
                asyncio.run(
                    bench_throughput(
                        port,
                        setup.token,
                        concurrency=opts.concurrency,
                        seconds=opts.seconds,
                        rounds=opts.rounds,
                        server_pid=server_pid,
                    )
                )
                show_pipeline(base, "noop.read", before)
        verify_audit(setup.db_url)
    print(f"\nload average at end: {loadavg()}")
    return 0


@contextmanager
def baseline_server(
    checkout: Path, d: Path, tool_port: int
) -> Iterator[tuple[str, str, str, dict[str, str], int]]:
    """`interlock serve` from an earlier checkout's src/, on its own database made by that code."""
    d.mkdir()
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve() / "src")}
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import gateway; from pathlib import Path; "
        "s = gateway.Setup(Path(sys.argv[2]), int(sys.argv[3])); "
        "print(json.dumps({'db_url': s.db_url, 'auth': s.auth, 'manifest': str(s.manifest)}))"
    )
    made = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "bench"), str(d), str(tool_port)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(made.stdout.strip().splitlines()[-1])
    port = free_port()
    serve = [sys.executable, "-c", "from interlock._internal.cli.main import main; main()", "serve"]
    serve += [
        "--manifest",
        info["manifest"],
        "--db",
        info["db_url"],
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env.update(
        {
            "INTERLOCK_EGRESS__ALLOW_CIDRS": '["127.0.0.1/32"]',
            "INTERLOCK_EGRESS__ALLOW_HOSTS": f'["127.0.0.1:{tool_port}"]',
            "INTERLOCK_IDENTITY__TOKEN_TTL_S": "86400",
        }
    )
    url = f"http://127.0.0.1:{port}"
    with process(serve, ready_url=f"{url}/readyz", log=d / "serve.log", env=env, cwd=d, timeout=300) as pid:
        yield (f"baseline {checkout.name}", f"{url}/mcp", f"{url}/v1", info["auth"], pid)


def verify_audit(db_url: str) -> None:
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))
    try:
        report = il.verify_audit()
        print(f"\naudit chain verified after the run: {'ok' if report.ok else 'BROKEN'}")
        assert report.ok, report
    finally:
        il.close()


if __name__ == "__main__":
    raise SystemExit(main())
