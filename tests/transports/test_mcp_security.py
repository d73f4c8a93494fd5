"""How MCP upstreams are reached safely: secrets in a stdio server's ``env`` are references read
when the process starts (never manifest text, never logged, never in an error), and servers
declared by ``url`` answer to the egress allowlist like HTTP tools, before anything connects."""

from __future__ import annotations

import hashlib
import logging
import socket
import sqlite3
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interlock._internal.gateway.egress import EgressPolicy
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.gateway.transports.mcp import McpTransport, import_mcp_tools
from interlock._internal.manifest.loader import load_manifest, load_manifest_text
from interlock._internal.manifest.models import McpServerSpec, ToolSpec
from interlock.exceptions import ConfigError, ManifestError, UpstreamError
from servers import call_context, free_port

SECRET = "ghs_s3cret-value-that-must-stay-hidden-1234"
FILE_SECRET = "file-secret-9f8e7d6c5b4a"

ENV_SERVER = textwrap.dedent(
    """
    import asyncio, hashlib, os, sys
    from mcp import MCPError
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("env")

    @server.tool()
    def show(name: str) -> str:
        return os.environ.get(name, "<unset>")

    @server.tool()
    def digest(name: str) -> str:
        return hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()

    @server.tool()
    def shout(name: str) -> str:
        print("login failed for " + os.environ.get(name, ""), file=sys.stderr, flush=True)
        return "shouted"

    @server.tool()
    def complain(name: str) -> str:
        raise ToolError("rejected credential " + os.environ.get(name, ""))

    @server.tool()
    def protest(name: str) -> str:
        raise MCPError(-32602, "rejected credential " + os.environ.get(name, ""))

    asyncio.run(server.run_stdio_async())
    """
)
ENV_MAP: dict[str, dict[str, Any]] = {
    "show": {"verb": "read", "idempotent": True},
    "digest": {"verb": "read", "idempotent": True},
    "complain": {"verb": "read"},
    "shout": {"verb": "read"},
    "protest": {"verb": "read"},
}

MANIFEST_HEAD = """\
name: mcp-security
version: "1"
owner: platform@example.com
objective: reach MCP upstreams safely
success_metric: {name: calls}
environments: [test]
"""

TOOL = """\
tools:
  - name: {tool}
    verb: read
    input_schema:
      type: object
      properties: {{{props}}}
    upstream: {{kind: mcp, server: {server}, tool: {tool}}}
"""


# ---- helpers ----------------------------------------------------------------------------------


def ctx(timeout_s: float = 20.0, credential: str | None = None) -> CallContext:
    return call_context(timeout_s, credential)


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def env_server(tmp_path: Path, env: dict[str, Any]) -> McpServerSpec:
    script = tmp_path / "env_server.py"
    script.write_text(ENV_SERVER)
    return McpServerSpec.model_validate({"name": "env", "command": [sys.executable, str(script)], "env": env})


def tools_of(transport: McpTransport, server: str, mapping: dict[str, dict[str, Any]]) -> dict[str, ToolSpec]:
    specs = import_mcp_tools(transport.list_tools(server), mapping, server=server)
    return {spec.name: spec for spec in specs}


@dataclass
class Upstream:
    url: str
    host: str
    port: int
    requests: list[str] = field(default_factory=list)


def serve_mcp(host: str) -> Generator[Upstream, None, None]:
    """An SDK MCP server over streamable HTTP on ``host``, counting the requests that reach it."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("echo")

    @server.tool()
    def echo(text: str) -> str:
        return text.upper()

    inner = server.streamable_http_app()
    port = free_port(host)
    upstream = Upstream(url=f"http://{host}:{port}/mcp", host=host, port=port)

    async def counting(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            upstream.requests.append(scope["method"])
        await inner(scope, receive, send)

    web = uvicorn.Server(uvicorn.Config(counting, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert web.started
    try:
        yield upstream
    finally:
        web.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    yield from serve_mcp("127.0.0.1")


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 that records whether anything connected to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def nothing_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def allowing(upstream: Upstream) -> EgressPolicy:
    return EgressPolicy.from_config([f"{upstream.host}:{upstream.port}"], ["127.0.0.1/32"])


# ---- env references ---------------------------------------------------------------------------


def test_env_references_resolve_into_the_child_process_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IL_TEST_GH_TOKEN", SECRET)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api.txt").write_text(FILE_SECRET + "\n")
    spec = env_server(
        tmp_path,
        {
            "GITHUB_TOKEN": {"from_env": "IL_TEST_GH_TOKEN"},
            "API_KEY": {"from_file": "secrets/api.txt"},
            "LOG_LEVEL": "debug",
        },
    )
    caplog.set_level(logging.DEBUG)
    transport = McpTransport([spec], cwd=tmp_path)
    try:
        tools = tools_of(transport, "env", ENV_MAP)

        def show(name: str) -> str:
            return str(transport.call(tools["show"], {"name": name}, ctx())["content"][0]["text"])

        def digest(name: str) -> str:
            return str(transport.call(tools["digest"], {"name": name}, ctx())["content"][0]["text"])

        assert digest("GITHUB_TOKEN") == hashlib.sha256(SECRET.encode()).hexdigest()
        assert digest("API_KEY") == hashlib.sha256(FILE_SECRET.encode()).hexdigest()  # newline stripped
        assert show("LOG_LEVEL") == "debug"
        # Interlock's own environment is not inherited wholesale: only what env names goes across.
        assert show("IL_TEST_GH_TOKEN") == "<unset>"
        # A server that echoes its secret does not hand it to the agent.
        assert show("GITHUB_TOKEN") == "[REDACTED]"
        assert show("API_KEY") == "[REDACTED]"
    finally:
        transport.close()
    assert SECRET not in caplog.text
    assert FILE_SECRET not in caplog.text
    assert SECRET not in repr(spec)
    assert FILE_SECRET not in spec.model_dump_json()


@pytest.mark.parametrize("tool", ["complain", "protest"])  # an error result; a JSON-RPC error
def test_errors_from_the_server_never_quote_a_resolved_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    monkeypatch.setenv("IL_TEST_GH_TOKEN", SECRET)
    spec = env_server(tmp_path, {"GITHUB_TOKEN": {"from_env": "IL_TEST_GH_TOKEN"}})
    transport = McpTransport([spec], cwd=tmp_path)
    try:
        tools = tools_of(transport, "env", ENV_MAP)
        with pytest.raises(UpstreamError) as caught:
            transport.call(tools[tool], {"name": "GITHUB_TOKEN"}, ctx())
    finally:
        transport.close()
    assert "rejected credential [REDACTED]" in caught.value.message
    for exc in chain(caught.value):
        assert SECRET not in str(exc)
        assert SECRET not in repr(getattr(exc, "details", ""))


def test_what_the_server_prints_to_stderr_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IL_TEST_GH_TOKEN", SECRET)
    spec = env_server(tmp_path, {"GITHUB_TOKEN": {"from_env": "IL_TEST_GH_TOKEN"}})
    transport = McpTransport([spec], cwd=tmp_path)
    try:
        tools = tools_of(transport, "env", ENV_MAP)
        transport.call(tools["shout"], {"name": "GITHUB_TOKEN"}, ctx())
    finally:
        transport.close()
    seen = ""
    deadline = time.monotonic() + 10
    while "login failed for" not in seen and time.monotonic() < deadline:
        out, err = capfd.readouterr()
        seen += out + err
        time.sleep(0.05)
    assert "login failed for [REDACTED]" in seen
    assert SECRET not in seen


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GITHUB_TOKEN": {"from_env": "IL_TEST_NOT_SET"}},
            "env.GITHUB_TOKEN: environment variable IL_TEST_NOT_SET",
        ),
        ({"API_KEY": {"from_file": "missing.txt"}}, "env.API_KEY: cannot read missing.txt"),
        ({"API_KEY": {"from_file": "empty.txt"}}, "env.API_KEY: empty.txt is empty"),
    ],
)
def test_an_unresolvable_reference_names_the_variable_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, Any], message: str
) -> None:
    monkeypatch.delenv("IL_TEST_NOT_SET", raising=False)
    (tmp_path / "empty.txt").write_text("\n")
    transport = McpTransport([env_server(tmp_path, env)], cwd=tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"MCP server env: {message}"):
            transport.list_tools("env")
    finally:
        transport.close()


def test_references_are_stored_as_references_never_as_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from interlock import Interlock, Settings

    monkeypatch.setenv("IL_TEST_GH_TOKEN", SECRET)
    (tmp_path / "env_server.py").write_text(ENV_SERVER)
    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(
        MANIFEST_HEAD
        + textwrap.dedent(
            f"""\
            mcp_servers:
              - name: env
                command: [{sys.executable!r}, env_server.py]
                env:
                  GITHUB_TOKEN: {{from_env: IL_TEST_GH_TOKEN}}
            """
        )
        + TOOL.format(tool="digest", props="name: {type: string}", server="env")
    )
    database = tmp_path / "interlock.db"
    il = Interlock(Settings(database={"url": f"sqlite:///{database}"}))
    try:
        il.migrate()
        runtime = il.load_workflow(manifest)
        result = runtime.transports["mcp"].call(runtime.tool("digest").spec, {"name": "GITHUB_TOKEN"}, ctx())
        assert result["content"][0]["text"] == hashlib.sha256(SECRET.encode()).hexdigest()
    finally:
        il.close()
    with sqlite3.connect(database) as conn:
        [(stored,)] = conn.execute("SELECT manifest FROM workflow_versions").fetchall()
    assert "from_env: IL_TEST_GH_TOKEN" in stored
    assert SECRET.encode() not in database.read_bytes()
    for wal in tmp_path.glob("interlock.db-*"):
        assert SECRET.encode() not in wal.read_bytes()


# ---- literal secrets are refused at load ------------------------------------------------------


def server_manifest(env_lines: str) -> str:
    return (
        MANIFEST_HEAD
        + "mcp_servers:\n  - name: env\n    command: [python, server.py]\n    env:\n"
        + textwrap.indent(env_lines, "      ")
        + TOOL.format(tool="show", props="name: {type: string}", server="env")
    )


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("GITHUB_TOKEN", "hello-world-1234", "its name says it is a secret"),
        ("DB_PASSWORD", "hunter2-hunter2", "its name says it is a secret"),
        ("apiKey", "abcdef123456", "its name says it is a secret"),
        ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-K7MDENG", "its name says it is a secret"),
        ("PGPASSWORD", "hunter2-hunter2", "its name says it is a secret"),
        ("OAuthCredentials", "abcdef123456", "its name says it is a secret"),
        ("UPSTREAM", "ghp_" + "a1B2" * 9, "the value looks like a secret"),
    ],
)
def test_a_literal_secret_is_refused_at_load_with_file_and_line(key: str, value: str, why: str) -> None:
    text = server_manifest(f"LOG_LEVEL: debug\n{key}: {value}\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest_text(text, file="workflow.yaml")
    err = caught.value
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith(f"{key}:"))
    assert (err.file, err.line, err.field) == ("workflow.yaml", line, f"mcp_servers[0].env.{key}")
    assert str(err).startswith(f"workflow.yaml:{line}: mcp_servers[0].env.{key}: {why}")
    assert f"{{from_env: {key}}}" in str(err)
    assert "{from_file: path}" in str(err)
    assert value not in str(err)


def test_plain_settings_and_references_load() -> None:
    text = server_manifest(
        "LOG_LEVEL: debug\n"
        "TOKENIZERS_PARALLELISM: 'false'\n"
        "KEYCLOAK_REALM: main\n"
        "GITHUB_TOKEN: {from_env: GITHUB_TOKEN}\n"
        "API_KEY: {from_file: secrets/api.txt}\n"
    )
    [server] = load_manifest_text(text).manifest.mcp_servers
    assert server.model_dump(mode="json")["env"] == {
        "LOG_LEVEL": "debug",
        "TOKENIZERS_PARALLELISM": "false",
        "KEYCLOAK_REALM": "main",
        "GITHUB_TOKEN": {"from_env": "GITHUB_TOKEN", "from_file": None},
        "API_KEY": {"from_env": None, "from_file": "secrets/api.txt"},
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("GITHUB_TOKEN: {from_envv: GITHUB_TOKEN}", "unknown key; did you mean 'from_env'?"),
        ("GITHUB_TOKEN: {from_env: A, from_file: b}", "set exactly one of 'from_env' or 'from_file'"),
        ("GITHUB_TOKEN: {}", "set exactly one of 'from_env' or 'from_file'"),
        ("GITHUB_TOKEN: {from_env: 'NOT A NAME'}", "does not match the pattern"),
    ],
)
def test_a_malformed_reference_is_a_clear_error(entry: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        load_manifest_text(server_manifest(entry + "\n"), file="workflow.yaml")
    assert str(caught.value.field).startswith("mcp_servers[0].env.GITHUB_TOKEN")


def test_env_belongs_to_stdio_servers() -> None:
    text = (
        MANIFEST_HEAD
        + "mcp_servers:\n  - name: remote\n    url: https://mcp.example.com/mcp\n"
        + "    env: {LOG_LEVEL: debug}\n"
        + TOOL.format(tool="show", props="", server="remote")
    )
    with pytest.raises(ManifestError, match="'env' sets a stdio server's environment"):
        load_manifest_text(text)


# ---- egress for url servers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "policy", "reason"),
    [
        ("127.0.0.1", lambda port: EgressPolicy(), "is not on the egress allowlist"),
        ("127.0.0.1", lambda port: EgressPolicy.from_config([f"127.0.0.1:{port}"]), "a loopback address"),
        # The address is allowed, the port is not: 127.0.0.1 alone means port 80.
        (
            "127.0.0.1",
            lambda port: EgressPolicy.from_config(["127.0.0.1"], ["127.0.0.1/32"]),
            "is not on the egress allowlist",
        ),
        ("localhost", lambda port: EgressPolicy.from_config([f"localhost:{port}"]), "a loopback address"),
    ],
)
def test_a_url_server_on_a_blocked_address_is_refused_without_connecting(
    trap: socket.socket, host: str, policy: Callable[[int], EgressPolicy], reason: str
) -> None:
    port = trap.getsockname()[1]
    spec = McpServerSpec(name="remote", url=f"http://{host}:{port}/mcp")
    transport = McpTransport([spec], egress=policy(port))
    try:
        with pytest.raises(UpstreamError, match=reason) as caught:
            transport.list_tools("remote")
    finally:
        transport.close()
    assert caught.value.code == "egress_denied"
    assert caught.value.details["server"] == "remote"
    assert str(caught.value).startswith("MCP server remote: egress denied:")
    assert nothing_connected(trap)


def test_cloud_metadata_is_refused_even_when_its_host_is_allowed() -> None:
    spec = McpServerSpec(name="meta", url="http://169.254.169.254/mcp")
    transport = McpTransport([spec], egress=EgressPolicy.from_config(["169.254.169.254"]))
    try:
        with pytest.raises(UpstreamError, match="link-local") as caught:
            transport.list_tools("meta")
    finally:
        transport.close()
    assert caught.value.code == "egress_denied"


def test_an_allowed_url_server_works(upstream: Upstream) -> None:
    transport = McpTransport([McpServerSpec(name="echo", url=upstream.url)], egress=allowing(upstream))
    try:
        tools = tools_of(transport, "echo", {"echo": {"verb": "read"}})
        result = transport.call(tools["echo"], {"text": "hi"}, ctx())
    finally:
        transport.close()
    assert result["content"][0]["text"] == "HI"


def test_an_allowed_url_server_works_with_an_injected_credential(upstream: Upstream) -> None:
    transport = McpTransport([McpServerSpec(name="echo", url=upstream.url)], egress=allowing(upstream))
    try:
        tools = transport.list_tools("echo", headers={"X-Api-Key": "k"})
        [spec] = import_mcp_tools(
            tools,
            {
                "echo": {
                    "verb": "read",
                    "credential": {"env": "ECHO_KEY", "header": "X-Api-Key", "scheme": None},
                }
            },
            server="echo",
        )
        result = transport.call(spec, {"text": "hey"}, ctx(credential="k"))
    finally:
        transport.close()
    assert result["content"][0]["text"] == "HEY"


def test_connections_go_to_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name passes the check as 127.0.0.1, then resolves to 127.0.0.2, where a
    server listens. The connection is refused and that server never hears a request."""
    inner = serve_mcp("127.0.0.2")
    internal = next(inner)
    answers = iter(["127.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in ("rebind.test", b"rebind.test"):  # anyio resolves IDNA-encoded bytes
            address = next(answers, "127.0.0.2")
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    policy = EgressPolicy.from_config([f"rebind.test:{internal.port}"], ["127.0.0.1/32"])
    spec = McpServerSpec(name="rebind", url=f"http://rebind.test:{internal.port}/mcp")
    transport = McpTransport([spec], egress=policy, connect_timeout_s=10)
    try:
        with pytest.raises(UpstreamError, match="rebind.test resolves to 127.0.0.2, a loopback") as caught:
            transport.list_tools("rebind")
    finally:
        transport.close()
        inner.close()
    assert caught.value.code == "egress_denied"
    assert internal.requests == []


def test_build_runtime_refuses_url_servers_without_a_policy(tmp_path: Path, trap: socket.socket) -> None:
    port = trap.getsockname()[1]
    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(
        MANIFEST_HEAD
        + f"mcp_servers:\n  - name: remote\n    url: http://127.0.0.1:{port}/mcp\n"
        + TOOL.format(tool="echo", props="text: {type: string}", server="remote")
    )
    runtime = build_runtime(load_manifest(manifest))
    try:
        with pytest.raises(UpstreamError, match="not on the egress allowlist") as caught:
            runtime.transports["mcp"].call(runtime.tool("echo").spec, {"text": "x"}, ctx())
    finally:
        runtime.close()
    assert caught.value.code == "egress_denied"
    assert nothing_connected(trap)


@pytest.mark.parametrize("allowed", [True, False])
def test_the_servers_egress_settings_govern_url_servers(
    tmp_path: Path, upstream: Upstream, allowed: bool
) -> None:
    from interlock import Interlock, Settings

    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(
        MANIFEST_HEAD
        + f"mcp_servers:\n  - name: remote\n    url: {upstream.url}\n"
        + TOOL.format(tool="echo", props="text: {type: string}", server="remote")
    )
    egress = {"allow_hosts": [f"127.0.0.1:{upstream.port}"], "allow_cidrs": ["127.0.0.1/32"]}
    settings = Settings(
        database={"url": f"sqlite:///{tmp_path / 'interlock.db'}"},
        egress=egress if allowed else {},
    )
    il = Interlock(settings)
    before = len(upstream.requests)
    try:
        il.migrate()
        runtime = il.load_workflow(manifest)
        call = runtime.transports["mcp"].call
        if allowed:
            assert call(runtime.tool("echo").spec, {"text": "ok"}, ctx())["content"][0]["text"] == "OK"
        else:
            with pytest.raises(UpstreamError, match="egress denied") as caught:
                call(runtime.tool("echo").spec, {"text": "ok"}, ctx())
            assert caught.value.code == "egress_denied"
            assert len(upstream.requests) == before
    finally:
        il.close()
