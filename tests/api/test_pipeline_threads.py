"""``server.pipeline_threads`` caps the threads running the action pipeline at once, and an
action waiting on its upstream tool does not count: with one thread, a slow tool's call in flight
does not hold up another run's action (``gateway/gate.py``)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from interlock import Interlock, Settings
from interlock._internal.server import create_app
from servers import LiveServer

MANIFEST = """
name: gated
version: "1"
owner: ops@example.com
objective: show that a slow tool gives its turn away
success_metric: {name: turns}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [read]}
tools:
  - name: slow.read
    verb: read
    input_schema: {type: object, properties: {id: {type: string}}, required: [id]}
    timeout_s: 30
    upstream: {kind: python, callable: "gated_tools:slow"}
  - name: fast.read
    verb: read
    input_schema: {type: object, properties: {id: {type: string}}, required: [id]}
    upstream: {kind: python, callable: "gated_tools:fast"}
rules:
  allow:
    - {id: reads, verb: read}
"""

TOOLS = """
import threading
entered = threading.Event()
release = threading.Event()

def slow(id):
    entered.set()
    release.wait(30)
    return {"id": id, "slow": True}

def fast(id):
    return {"id": id, "slow": False}
"""


def _tools(directory: str) -> Any:
    """The tool module as the Python transport loaded it (under a private name of its own)."""
    path = str(Path(directory) / "gated_tools.py")
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == path:
            return module
    return None


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, str]]:
    (tmp_path / "workflow.yaml").write_text(MANIFEST)
    (tmp_path / "gated_tools.py").write_text(TOOLS)
    il = Interlock(Settings(database={"url": db_url}, server={"pipeline_threads": 1}))  # type: ignore[arg-type]
    il.migrate()
    il.load_workflow(tmp_path / "workflow.yaml")
    creds = il.agents.create("bot", workflow="gated", environment="production", actor="test")
    token = il.issue_token(creds.client_id, creds.client_secret).token
    try:
        with LiveServer(create_app(interlock=il)) as url, httpx.Client(base_url=url, timeout=60) as http:
            http.headers["Authorization"] = f"Bearer {token}"
            yield http, str(tmp_path)
    finally:
        tools = _tools(str(tmp_path))
        if tools is not None:
            tools.release.set()
        il.close()


def test_a_slow_upstream_does_not_hold_up_other_actions(served: tuple[httpx.Client, str]) -> None:
    http, directory = served
    runs = [http.post("/v1/runs", json={}).json()["id"] for _ in range(2)]
    answers: dict[str, httpx.Response] = {}

    def slow_action() -> None:
        answers["slow"] = http.post(
            f"/v1/runs/{runs[0]}/actions", json={"tool": "slow.read", "arguments": {"id": "a"}}
        )

    caller = threading.Thread(target=slow_action)
    caller.start()
    try:
        for _ in range(300):
            tools = _tools(directory)
            if tools is not None and tools.entered.wait(0.1):
                break
        else:
            pytest.fail("the slow tool was never called")
        # The one pipeline thread's slot is free while the slow call waits on its upstream.
        fast = http.post(f"/v1/runs/{runs[1]}/actions", json={"tool": "fast.read", "arguments": {"id": "b"}})
        assert fast.status_code == 200, fast.text
        assert fast.json()["status"] == "executed"
        assert fast.json()["result"] == {"id": "b", "slow": False}
        assert "slow" not in answers
    finally:
        tools = _tools(directory)
        if tools is not None:
            tools.release.set()
        caller.join(timeout=60)
    assert answers["slow"].status_code == 200, answers["slow"].text
    assert answers["slow"].json()["result"] == {"id": "a", "slow": True}


def test_pipeline_threads_is_checked() -> None:
    from interlock.exceptions import ConfigError

    with pytest.raises((ConfigError, ValueError), match="pipeline_threads"):
        Settings(server={"pipeline_threads": 0})  # type: ignore[arg-type]
