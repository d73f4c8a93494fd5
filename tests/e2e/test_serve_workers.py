"""`interlock serve --workers 2`: two processes answer on one port, housekeeping runs in one of
them, and SIGTERM stops both cleanly; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import create_engine, select

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.store import tables as t
from servers import free_port, interlock_command

pytestmark = pytest.mark.e2e


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    """Worker processes of the supervisor ``pid`` (not multiprocessing's resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                found.add(int(entry.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def accepted_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server's end of a loopback connection, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return inode
    return None


class Served:
    def __init__(self, db_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.log = (workdir / "serve.log").open("wb")
        self.out_path = workdir / "serve.out"
        env = {**os.environ, "INTERLOCK_RECOVERY__HOUSEKEEPING_EVERY_S": "0.2"}
        cmd = [*interlock_command(), "serve", "--manifest", str(SUPPORT_TRIAGE), "--db", db_url]
        cmd += ["--port", str(self.port), "--workers", "2", "--json", "--log-level", "info"]
        with self.out_path.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""

    def output(self) -> dict[str, object]:
        # The URLs as one JSON document, then uvicorn's access log.
        data: dict[str, object] = json.JSONDecoder().raw_decode(self.out_path.read_text())[0]
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:
    harness = Harness(db_url)  # a database with the workflow's agents
    harness.close()
    s = Served(db_url, tmp_path)
    s.token = harness.tokens["triage-bot"]
    try:
        yield s
    finally:
        s.stop()


def mcp_calls(url: str, token: str, mode: str) -> list[str]:
    """An MCP client session (``legacy``: the initialize handshake) listing tools and calling one
    several times; its requests may reach either worker."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> list[str]:
        auth = {"Authorization": f"Bearer {token}"}
        limits = httpx2.Limits(max_keepalive_connections=0)  # a new connection, maybe a new worker
        async with (
            httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=60.0), limits=limits) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http), cache=None, mode=mode) as client,
        ):
            names = [tool.name for tool in (await client.list_tools()).tools]
            assert "tickets.get" in names
            statuses = []
            for i in range(1, 6):  # different tickets: the same call repeated would look like a loop
                result = await client.call_tool("tickets.get", {"ticket_id": f"T-100{i}"})
                assert result.meta is not None
                statuses.append(str(result.meta["interlock/status"]))
            return statuses

    return anyio.run(main)


def test_two_workers_answer_on_one_port_and_stop_together_on_sigterm(served: Served, db_url: str) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{served.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, "the server", timeout=300)  # spawning workers is slow on a busy machine
    workers = children(served.proc.pid)
    wait_for(lambda: len(workers | children(served.proc.pid)) >= 2, "two workers")
    workers = children(served.proc.pid)
    assert len(workers) == 2, workers  # the supervisor serves nothing itself
    printed = served.output()
    assert printed["workers"] == 2
    assert str(printed["ui_sign_in"]).startswith(f"{served.url}/ui/login?token=")  # printed once

    # Each new connection is accepted by whichever worker gets to it first: keep opening them
    # until each worker has answered on one.
    answered: set[int] = set()
    deadline = time.monotonic() + 120
    while answered != workers and time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", served.port)) as conn:
            conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode())
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            inode = accepted_inode(served.port, conn.getsockname()[1])
            answered |= {pid for pid in workers if inode is not None and inode in socket_inodes(pid)}
    assert answered == workers
    for mode in ("legacy", "auto"):  # with the handshake, and without
        assert mcp_calls(served.url, served.token, mode) == ["executed"] * 5

    # Housekeeping: one lease, held by one worker, and held on (no worker takes it from another).
    engine = create_engine(db_url)
    try:

        def holders() -> list[str]:
            with engine.connect() as conn:
                return [r.holder for r in conn.execute(select(t.leader_leases))]

        wait_for(lambda: len(holders()) == 1, "a housekeeping leader")
        [holder] = holders()
        assert int(holder.split(":")[1]) in workers
        time.sleep(1.5)  # several periods of 0.2 s
        assert holders() == [holder]

        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        assert holders() == []  # the leader shut down cleanly and handed the lease back
    finally:
        engine.dispose()
    log = Path(served.log.name).read_text()
    assert log.count("Application shutdown complete.") == 2, log[-3000:]
