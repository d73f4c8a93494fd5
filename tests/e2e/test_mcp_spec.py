"""The MCP gateway to the letter of the specification, checked with clients nobody here wrote.

Raw HTTP (httpx) checks what the wire must say: 403 for a foreign Origin or Host, RFC 9728 and
RFC 8414 metadata, the Bearer challenge, RFC 8707 resource-bound tokens. The TypeScript SDK, v1
(``@modelcontextprotocol/sdk``) and v2 (``@modelcontextprotocol/client``), installed from the npm
registry into tests/e2e/mcp_ts by ``npm ci``, then drives the gateway as an agent would: OAuth
discovery with client credentials, a paginated 1,000-tool catalogue, allowed and denied calls,
hidden and unknown tools, a bad cursor, an evil Origin, and a stream that drops and resumes.

Without Node.js or tests/e2e/mcp_ts/node_modules the TypeScript tests are skipped with a notice,
unless ``INTERLOCK_REQUIRE_NODE=1`` (as CI sets), which makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import pytest

from servers import free_port

pytestmark = pytest.mark.e2e

TS_DIR = Path(__file__).resolve().parent / "mcp_ts"
BULK_TOOLS = 1000

MANIFEST_HEAD = """
name: mcp-interop
version: "1"
owner: ops@example.com
objective: Let MCP clients that are not the Python SDK speak to the gateway.
success_metric: {name: calls answered}
environments: [test]
agents:
  - {id: bot, environment: test, roles: [worker]}
roles:
  worker: {verbs: [read, update]}
budgets:
  per_run: {max_steps: 100000, max_tool_calls: 100000}
rules:
  allow:
    - {id: reads, verb: read}
    - {id: transfers, tool: transfer}
  forbid:
    - {id: big-transfers, tool: transfer, when: "amount > 100", description: Transfers above 100 are never made by an agent.}
tools:
  - name: echo
    description: Says the text back.
    verb: read
    input_schema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
    upstream: {kind: python, callable: "interop_tools:echo"}
  - name: slow_echo
    description: Says the text back once the test lets it.
    verb: read
    timeout_s: 300
    input_schema: {type: object, properties: {text: {type: string}}, required: [text], additionalProperties: false}
    upstream: {kind: python, callable: "interop_tools:slow_echo"}
  - name: transfer
    description: Moves an amount.
    verb: update
    input_schema: {type: object, properties: {amount: {type: integer, minimum: 1}}, required: [amount], additionalProperties: false}
    upstream: {kind: python, callable: "interop_tools:transfer"}
  - name: purge
    description: Deletes everything; the worker role does not grant it.
    verb: delete
    input_schema: {type: object, additionalProperties: false}
    upstream: {kind: python, callable: "interop_tools:purge"}
"""

BULK_TOOL = """  - name: bulk_{i:04d}
    verb: read
    input_schema: {{type: object, additionalProperties: false}}
    upstream: {{kind: python, callable: "interop_tools:purge"}}
"""

TOOLS = """
import time
from pathlib import Path

HERE = Path(__file__).parent


def echo(text):
    return {"text": text}


def slow_echo(text):
    # Waits until the test has seen the stream drop, so the answer can only come by resumption.
    release = HERE / ("release-" + text)
    deadline = time.monotonic() + 240
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    return {"text": text}


def transfer(amount):
    return {"moved": amount}


def purge():
    return {"purged": True}
"""


@dataclass
class Server:
    base: str
    url: str
    workdir: Path
    il: Any
    client_id: str
    client_secret: str
    token: str

    def node(self, **options: Any) -> dict[str, Any]:
        return run_node({"url": self.url, **options})


def node_problem() -> str | None:
    if shutil.which("node") is None:
        return "Node.js is not installed"
    if not (TS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        return "tests/e2e/mcp_ts/node_modules is missing (run 'npm ci' in tests/e2e/mcp_ts)"
    return None


def need_node() -> None:
    problem = node_problem()
    if problem is None:
        return
    message = f"TypeScript MCP client tests need Node.js and the npm packages: {problem}"
    if os.environ.get("INTERLOCK_REQUIRE_NODE") == "1":
        pytest.fail(message + " (INTERLOCK_REQUIRE_NODE=1)")
    pytest.skip(message)


def run_node(options: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(TS_DIR / "drive.mjs"), json.dumps(options)],
        cwd=TS_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"node printed nothing (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    out: dict[str, Any] = json.loads(lines[-1])
    assert "crashed" not in out, f"{out}\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import uvicorn

    from interlock import Interlock, Settings
    from interlock._internal.server import create_app

    workdir = tmp_path_factory.mktemp("mcp-spec")
    manifest = workdir / "workflow.yaml"
    bulk = "".join(BULK_TOOL.format(i=i) for i in range(BULK_TOOLS))
    manifest.write_text(MANIFEST_HEAD + bulk)
    (workdir / "interop_tools.py").write_text(TOOLS)
    settings = Settings(database={"url": f"sqlite:///{workdir / 'interlock.db'}"})  # type: ignore[arg-type]
    il = Interlock(settings)
    il.migrate()
    runtime = il.load_workflow(manifest)
    creds = il.agents.create("bot", workflow=runtime.name, environment="test", actor="test")
    token = il.issue_token(creds.client_id, creds.client_secret).token

    port = free_port()
    app = create_app(interlock=il)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    base = f"http://127.0.0.1:{port}"
    try:
        yield Server(
            base=base,
            url=base + "/mcp",
            workdir=workdir,
            il=il,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            token=token,
        )
    finally:
        uv.should_exit = True
        thread.join(30)
        il.close()


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def post_init(server: Server, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {server.token}"}
    return httpx.post(server.url, json=INIT, headers={**MCP_HEADERS, **auth, **headers}, timeout=60)


# ---- Origin and Host ---------------------------------------------------------------------------


def test_a_foreign_origin_or_host_is_refused_with_403_even_with_a_valid_token(server: Server) -> None:
    evil = post_init(server, Origin="http://evil.example.com")
    assert evil.status_code == 403
    assert evil.json()["error"]["code"] == "origin_not_allowed"
    assert post_init(server, Origin="null").status_code == 403
    host = post_init(server, Host="evil.example.com")
    assert host.status_code == 403
    assert host.json()["error"]["code"] == "host_not_allowed"
    # DNS rebinding proper: the attacker's name, resolving to this machine, as both Origin and Host.
    both = post_init(server, Host="evil.example.com:80", Origin="http://evil.example.com")
    assert both.status_code == 403
    # Refused before authentication: no token needed to be told no, and none is looked at.
    bare = httpx.post(server.url, json=INIT, headers={**MCP_HEADERS, "Origin": "http://evil.example.com"})
    assert bare.status_code == 403


def test_loopback_origins_and_hosts_are_served(server: Server) -> None:
    port = server.base.rsplit(":", 1)[1]
    for origin in (server.base, f"http://localhost:{port}", "http://localhost:5173", "https://127.0.0.1"):
        assert post_init(server, Origin=origin).status_code == 200, origin
    assert post_init(server, Host=f"localhost:{port}").status_code == 200
    assert post_init(server).status_code == 200  # no Origin: not a browser


def test_configured_origins_and_hosts_are_served() -> None:
    from interlock import Settings
    from interlock._internal.api.mcp_gateway import _allowlists

    settings = Settings(
        server={"public_url": "https://agents.example.com"},  # type: ignore[arg-type]
        mcp={"allowed_origins": ["https://console.example.com:*"], "allowed_hosts": ["mcp.internal:8000"]},  # type: ignore[arg-type]
    )
    hosts, origins = _allowlists(settings)
    assert hosts.allows("agents.example.com")
    assert hosts.allows("agents.example.com:443")
    assert hosts.allows("mcp.internal:8000")
    assert not hosts.allows("mcp.internal:8001")
    assert hosts.allows("127.0.0.1:9999")
    assert not hosts.allows("evil.example.com")
    assert origins.allows("https://agents.example.com")
    assert origins.allows("https://console.example.com:8443")
    assert not origins.allows("http://agents.example.com")
    assert not origins.allows("https://evil.example.com")
    everything, _ = _allowlists(Settings(mcp={"allowed_hosts": ["*"]}))  # type: ignore[arg-type]
    assert everything.allows("anything.example")


# ---- OAuth discovery and resource-bound tokens -------------------------------------------------


def test_the_401_challenge_points_at_protected_resource_metadata(server: Server) -> None:
    missing = httpx.post(server.url, json=INIT, headers=MCP_HEADERS)
    assert missing.status_code == 401
    challenge = missing.headers["www-authenticate"]
    metadata_url = f"{server.base}/.well-known/oauth-protected-resource/mcp"
    assert challenge == f'Bearer realm="interlock", resource_metadata="{metadata_url}"'
    bad = httpx.post(server.url, json=INIT, headers={**MCP_HEADERS, "Authorization": "Bearer nope"})
    assert f'resource_metadata="{metadata_url}"' in bad.headers["www-authenticate"]
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]

    resource = httpx.get(metadata_url).json()
    assert resource["resource"] == server.url
    assert resource["authorization_servers"] == [server.base]
    assert resource["bearer_methods_supported"] == ["header"]
    api = httpx.get(f"{server.base}/.well-known/oauth-protected-resource/v1").json()
    assert api["resource"] == server.base + "/v1"
    assert httpx.get(f"{server.base}/.well-known/oauth-protected-resource").json()["resource"] == server.base

    issuer = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
    assert issuer["issuer"] == server.base
    assert issuer["token_endpoint"] == server.base + "/oauth/token"
    assert issuer["grant_types_supported"] == ["client_credentials"]
    assert set(issuer["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
    }
    assert issuer["response_types_supported"] == []
    authorize = httpx.get(issuer["authorization_endpoint"], params={"response_type": "code"})
    assert authorize.status_code == 400
    assert authorize.json()["error"] == "unsupported_response_type"


def _token(server: Server, *resources: str) -> httpx.Response:
    form: dict[str, Any] = {"grant_type": "client_credentials", "resource": list(resources)}
    return httpx.post(
        server.base + "/oauth/token", data=form, auth=(server.client_id, server.client_secret), timeout=60
    )


def test_a_token_bound_to_a_resource_is_good_only_there(server: Server) -> None:
    for_mcp = _token(server, server.url + "/")  # spelled with a trailing slash: the same resource
    assert for_mcp.status_code == 200, for_mcp.text
    for_api = _token(server, server.base + "/v1").json()["access_token"]
    for_all = _token(server, server.base).json()["access_token"]
    mcp_token = for_mcp.json()["access_token"]

    def init(token: str) -> int:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        return httpx.post(server.url, json=INIT, headers=headers, timeout=60).status_code

    def tools(token: str) -> int:
        return httpx.get(server.base + "/v1/tools", headers={"Authorization": f"Bearer {token}"}).status_code

    assert (init(mcp_token), tools(mcp_token)) == (200, 401)
    assert (init(for_api), tools(for_api)) == (401, 200)
    assert (init(for_all), tools(for_all)) == (200, 200)
    assert (init(server.token), tools(server.token)) == (200, 200)  # no resource named: both


def test_a_token_names_the_issuer_its_authorization_server_metadata_names(server: Server) -> None:
    # RFC 9068 §2.2 / RFC 8414 §2: ``iss`` is the issuer identifier the metadata publishes, so a
    # client that checks it against discovery accepts the token.
    metadata = httpx.get(f"{server.base}/.well-known/oauth-authorization-server").json()
    token = _token(server).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == metadata["issuer"]
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    assert httpx.post(server.url, json=INIT, headers=headers, timeout=60).status_code == 200

    for bad in ("https://elsewhere.example.com/mcp", server.url + "#frag", "not a url"):
        refused = _token(server, bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"] == "invalid_target"
    assert _token(server, server.url, "https://elsewhere.example.com").status_code == 400


# ---- resumable streams: the event store --------------------------------------------------------


def test_each_session_resumes_only_its_own_events() -> None:
    from mcp.server.streamable_http import EventMessage
    from mcp_types import JSONRPCResponse

    from interlock._internal.api.mcp_events import ResumableSessionManager, SessionEventStore

    async def main() -> None:
        manager = ResumableSessionManager(app=None, resume_events=3)  # type: ignore[arg-type]
        one, two = manager.event_store, manager.event_store
        assert isinstance(one, SessionEventStore)
        assert isinstance(two, SessionEventStore)
        assert one is not two
        # Both sessions number their requests alike: stream "2" in each.
        prime_one = await one.store_event("2", None)
        prime_two = await two.store_event("2", None)
        await one.store_event("2", JSONRPCResponse(jsonrpc="2.0", id=2, result={"who": "one"}))
        await two.store_event("2", JSONRPCResponse(jsonrpc="2.0", id=2, result={"who": "two"}))
        await one.store_event("3", JSONRPCResponse(jsonrpc="2.0", id=3, result={"who": "one, other stream"}))
        seen: list[EventMessage] = []

        async def collect(event: EventMessage) -> None:
            seen.append(event)

        assert await one.replay_events_after(prime_one, collect) == "2"
        assert [e.message.result for e in seen] == [{"who": "one"}]  # type: ignore[union-attr]
        assert await one.replay_events_after(prime_two, collect) is None  # another session's event
        # Bounded: the oldest event (the priming one) is gone, so that stream cannot resume.
        await one.store_event("4", None)
        assert one.size == 3
        assert await one.replay_events_after(prime_one, collect) is None
        assert ResumableSessionManager(app=None, resume_events=0).event_store is None  # type: ignore[arg-type]

    anyio.run(main)


def test_a_post_stream_starts_with_a_priming_event_with_id_and_retry(server: Server) -> None:
    with httpx.Client(timeout=60) as http:
        auth = {"Authorization": f"Bearer {server.token}"}
        opened = http.post(server.url, json=INIT, headers={**MCP_HEADERS, **auth})
        session = {
            **MCP_HEADERS,
            **auth,
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        http.post(server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        listing = http.post(
            server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session
        )
    assert listing.headers["content-type"].startswith("text/event-stream")
    first = listing.text.replace("\r\n", "\n").split("\n\n")[0]
    fields = dict(
        line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in first.splitlines()
    )
    assert fields.get("id"), first[:300]
    assert fields.get("retry") == "1000", first[:300]
    assert fields.get("data", "missing") == "", first[:300]


def test_a_sessionless_call_is_answered_as_json_and_a_session_keeps_its_stream(server: Server) -> None:
    """A 2026-07-28 tools/call is answered with one JSON body and no session, while a
    handshake-era session's answer stays a resumable event stream (the test above)."""
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "plain"}, "_meta": envelope},
    }
    headers = {
        **MCP_HEADERS,
        "Authorization": f"Bearer {server.token}",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    answer = httpx.post(server.url, json=call, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert "mcp-session-id" not in answer.headers
    body = answer.json()
    assert body["id"] == 7
    assert body["result"]["structuredContent"] == {"text": "plain"}
    assert body["result"]["_meta"]["interlock/status"] == "executed"


# ---- the TypeScript SDK ------------------------------------------------------------------------


def check_session(out: dict[str, Any], *, sdk: str) -> None:
    names = out["list"]["names"]
    assert len(names) == len(set(names)) == BULK_TOOLS + 3  # purge is hidden
    assert names[:3] == ["echo", "slow_echo", "transfer"]
    assert "purge" not in names
    # 1,003 tools, 100 a page: v1 hands each page over; v2 follows the cursors itself.
    assert out["list"]["pages"] == (11 if sdk == "v1" else 1)

    echo = out["echo"]["ok"]
    assert echo.get("isError") in (None, False)
    assert echo["structuredContent"] == {"text": "hello from TypeScript"}
    assert out["allowed"]["ok"]["structuredContent"] == {"moved": 5}

    denied = out["denied"]["ok"]  # a visible tool that policy denies: a tool result with the reason
    assert denied["isError"] is True
    assert "big-transfers" in denied["content"][0]["text"]
    assert denied["_meta"]["interlock/status"] == "denied"

    hidden, unknown = out["hidden"]["error"], out["unknown"]["error"]
    assert hidden["code"] == unknown["code"] == -32602
    assert hidden["message"].replace("purge", "X") == unknown["message"].replace("no_such_tool", "X")
    assert out["badCursor"]["error"]["code"] == -32602


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_the_typescript_sdk_authenticates_by_discovery_and_sees_the_spec(server: Server, sdk: str) -> None:
    need_node()
    out = server.node(
        sdk=sdk,
        scenario="session",
        clientId=server.client_id,
        clientSecret=server.client_secret,
        issuer=server.base,
    )
    assert out["sessionId"]  # an initialize handshake, in a session
    check_session(out, sdk=sdk)


def test_the_typescript_sdk_v2_without_a_session(server: Server) -> None:
    need_node()
    out = server.node(
        sdk="v2",
        scenario="session",
        mode="auto",
        clientId=server.client_id,
        clientSecret=server.client_secret,
        issuer=server.base,
    )
    assert out["sessionId"] is None, out["protocolVersion"]  # 2026-07-28: no handshake, no session
    check_session(out, sdk="v2")


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_the_typescript_sdk_is_refused_from_an_evil_origin(server: Server, sdk: str) -> None:
    need_node()
    out = server.node(
        sdk=sdk, scenario="origin", token=server.token, headers={"Origin": "http://evil.example.com"}
    )
    assert "refused" in out, out
    assert "403" in json.dumps(out["refused"])
    fine = server.node(sdk=sdk, scenario="origin", token=server.token, headers={"Origin": server.base})
    assert fine == {"connected": True}


# ---- a stream that drops and resumes -----------------------------------------------------------


@dataclass
class DroppingProxy:
    """A TCP proxy in front of the gateway that cuts the connection carrying a ``slow_echo``
    call right after the server's priming event, and notes every ``Last-Event-ID`` it forwards."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    dropped: threading.Event = field(default_factory=threading.Event)
    resumed_with: list[str] = field(default_factory=list)

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            armed = threading.Event()
            threading.Thread(target=self._to_server, args=(client, upstream, armed), daemon=True).start()
            threading.Thread(target=self._to_client, args=(upstream, client, armed), daemon=True).start()

    def _to_server(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if b'"slow_echo"' in data and not self.dropped.is_set():
                    armed.set()
                for line in data.split(b"\r\n"):
                    if line.lower().startswith(b"last-event-id:"):
                        self.resumed_with.append(line.split(b":", 1)[1].strip().decode())
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _shut(upstream)

    def _to_client(self, upstream: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
                if armed.is_set() and b"\nid: " in data.replace(b"\r\n", b"\n"):
                    self.dropped.set()  # the priming event is through: cut the line
                    break
        except OSError:
            pass
        finally:
            _shut(client)
            _shut(upstream)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_a_dropped_stream_resumes_and_the_answer_arrives(server: Server) -> None:
    need_node()
    proxy = DroppingProxy(upstream_port=int(server.base.rsplit(":", 1)[1]))
    proxy.start()
    text = "resumed"
    outcome: dict[str, Any] = {}

    def drive() -> None:
        outcome.update(
            run_node(
                {
                    "url": f"http://127.0.0.1:{proxy.port}/mcp",
                    "sdk": "v1",
                    "scenario": "resume",
                    "token": server.token,
                    "text": text,
                }
            )
        )

    driver = threading.Thread(target=drive)
    driver.start()
    try:
        assert proxy.dropped.wait(180), "the slow_echo stream never reached the proxy"
        # Only now may the tool answer: the response exists only after the client lost its stream.
        (server.workdir / f"release-{text}").touch()
        driver.join(240)
    finally:
        proxy.close()
    assert not driver.is_alive(), "the client never finished"
    result = outcome["result"]["ok"]
    assert result["structuredContent"] == {"text": text}, outcome
    assert outcome["protocolVersion"] == "2025-11-25"
    assert proxy.resumed_with, "the client did not reconnect with Last-Event-ID"
