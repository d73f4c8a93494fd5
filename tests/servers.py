"""Test helpers for real servers on 127.0.0.1: free ports, `interlock serve` processes, and the
context a transport call to an upstream server carries."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from interlock._internal.gateway.transports.base import CallContext


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def interlock_command() -> list[str]:
    """The installed `interlock` script next to this Python, or the CLI module as a fallback."""
    script = Path(sys.executable).with_name("interlock")
    if script.exists():
        return [str(script)]
    found = shutil.which("interlock")
    if found:
        return [found]
    return [sys.executable, "-c", "from interlock._internal.cli.main import main; main()"]


class ServeProcess:
    """One `interlock serve` process with its own client; its output goes to a log file that is
    shown when it fails to start. It runs with the test's environment (SUPPORT_DESK_DB included),
    so several processes write to one help desk."""

    def __init__(
        self, name: str, *, manifest: Path, db_url: str, workdir: Path, max_connections: int = 100
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        cmd = [
            *interlock_command(),
            "serve",
            "--manifest",
            str(manifest),
            "--db",
            db_url,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, env=os.environ.copy(), stdout=self._log, stderr=subprocess.STDOUT
        )
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.Client(base_url=self.url, timeout=120, limits=limits)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become ready:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._log.close()


class LiveServer:
    """uvicorn in a thread on a free port of 127.0.0.1."""

    def __init__(self, app: Any, **settings: Any) -> None:
        """``settings`` go to ``uvicorn.Config`` over the defaults (``lifespan``, ``http``...)."""
        config = uvicorn.Config(
            app, **{"host": "127.0.0.1", "port": 0, "log_level": "warning", "lifespan": "on", **settings}
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def call_context(timeout_s: float = 10.0, credential: str | None = None) -> CallContext:
    """What a transport's ``call`` is given for a test run's step."""
    return CallContext(
        run_id="run_test",
        step_id="stp_test",
        agent_id="tester",
        workflow="wf",
        idempotency_key="stp_test",
        credential=credential,
        timeout_s=timeout_s,
    )
