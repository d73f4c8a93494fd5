"""The HTTP transport against real HTTP servers on 127.0.0.1: credentials, egress, redirects,
timeouts, retries, the circuit breaker, and the whole pipeline never storing the secret."""

from __future__ import annotations

import json
import logging
import socket
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx
import pytest
from sqlalchemy import select

from interlock import ConfigError, UpstreamError
from interlock._internal.gateway.egress import EgressPolicy, HostRule, address_problem
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.gateway.transports.http import HttpTransport
from interlock._internal.limits.breaker import CircuitBreakerRegistry
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.store import tables as t

SECRET = "up-" + uuid.uuid4().hex  # matches no redaction pattern: only exact-secret masking hides it


# ---- a real upstream ---------------------------------------------------------------------------


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 that records every request it receives."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.queue: list[int] = []  # statuses /queue answers with, in order; then 200
        self.release = threading.Event()
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(
                self,
                status: int,
                body: Any = None,
                *,
                ctype: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with upstream._lock:
                    upstream.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                        }
                    )
                parts = urlsplit(self.path)
                path, query = parts.path, parse_qs(parts.query)
                auth = self.headers.get("Authorization", "")
                if path.startswith("/echo"):
                    self._reply(
                        200,
                        {
                            "method": self.command,
                            "path": self.path,
                            "body": body,
                            "headers": dict(self.headers),
                            "note": f"you sent {auth}",
                        },
                    )
                elif path.startswith("/status/"):
                    self._reply(int(path.split("/")[2]), {"error": "no", "you_sent": auth})
                elif path.startswith("/sleep/"):
                    upstream.release.wait(float(path.split("/")[2]))
                    self._reply(200, {"slept": True})
                elif path.startswith("/redirect/"):
                    self._reply(int(path.split("/")[2]), headers={"Location": query["to"][0]})
                elif path == "/loop":
                    self._reply(302, headers={"Location": "/loop"})
                elif path.startswith("/pad/"):
                    # The credential after `pad` spaces: where a cut in two would leak its start.
                    pad = " " * int(query["pad"][0])
                    secret = auth.removeprefix("Bearer ")
                    self._reply(int(path.split("/")[2]), f"{pad}{secret}{pad}".encode(), ctype="text/plain")
                elif path == "/text":
                    self._reply(200, b"plain words", ctype="text/plain; charset=utf-8")
                elif path == "/list":
                    self._reply(200, [1, 2, 3])
                elif path == "/big":
                    self._reply(200, {"blob": "x" * (3 * 1024 * 1024)})
                elif path == "/badjson":
                    self._reply(200, b"{nope")
                elif path == "/empty":
                    self._reply(204)
                elif path == "/queue":
                    with upstream._lock:
                        status = upstream.queue.pop(0) if upstream.queue else 200
                    self._reply(status, {"status": status})
                else:
                    self._reply(404, {"error": "no route"})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up early (size cap, timeouts) are part of the tests

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def upstream2() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection attempted in this test, by address."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    return seen


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, Callable[[], list[str]]]) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in table:
            return real(host, port, *args, **kwargs)
        out = []
        for addr in table[host]():
            if ":" in addr:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (addr, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port)))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- helpers -----------------------------------------------------------------------------------


def policy_for(*servers: Upstream, extra_hosts: tuple[str, ...] = (), loopback: bool = True) -> EgressPolicy:
    hosts = [f"127.0.0.1:{s.port}" for s in servers] + list(extra_hosts)
    return EgressPolicy.from_config(hosts, ["127.0.0.1/32"] if loopback else [])


@pytest.fixture
def transports() -> Iterator[Callable[..., HttpTransport]]:
    made: list[HttpTransport] = []

    def make(
        egress: EgressPolicy, *, breaker: CircuitBreakerRegistry | None = None, **kw: Any
    ) -> HttpTransport:
        transport = HttpTransport(
            egress=egress, breaker=breaker or CircuitBreakerRegistry(), backoff_s=0.01, **kw
        )
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def tool(
    url: str,
    *,
    method: str = "GET",
    body: str = "json",
    idempotent: bool = False,
    credential: dict[str, Any] | None = None,
    timeout_s: float = 5,
    headers: dict[str, str] | None = None,
    name: str = "api.call",
) -> ToolSpec:
    return ToolSpec.model_validate(
        {
            "name": name,
            "verb": "read",
            "idempotent": idempotent,
            "timeout_s": timeout_s,
            "upstream": {
                "kind": "http",
                "method": method,
                "url": url,
                "body": body,
                "headers": headers or {},
            },
            "credential": credential if credential is not None else {"env": "TEST_UPSTREAM_TOKEN"},
        }
    )


def ctx(spec: ToolSpec, *, credential: str | None = SECRET) -> CallContext:
    return CallContext(
        run_id="run_1",
        step_id="stp_1",
        agent_id="triage-bot",
        workflow="wf",
        idempotency_key="idem-123",
        credential=credential,
        timeout_s=spec.timeout_s,
    )


def call(transport: HttpTransport, spec: ToolSpec, args: dict[str, Any] | None = None) -> Any:
    return transport.call(spec, args or {}, ctx(spec))


def refused(transport: HttpTransport, spec: ToolSpec, args: dict[str, Any] | None = None) -> UpstreamError:
    with pytest.raises(UpstreamError) as err:
        call(transport, spec, args)
    assert SECRET not in str(err.value)
    assert SECRET not in repr(err.value.details)
    return err.value


# ---- requests, credentials and answers ---------------------------------------------------------


def test_credential_idempotency_key_and_static_headers_reach_the_upstream(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    spec = tool(upstream.base + "/echo/{ticket_id}", headers={"X-Team": "support", "Host": "evil.example"})
    result = call(transport, spec, {"ticket_id": "T-1001", "limit": 5})
    seen = upstream.requests[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen["headers"]["Idempotency-Key"] == "idem-123"
    assert seen["headers"]["X-Team"] == "support"
    assert seen["headers"]["Host"] == f"127.0.0.1:{upstream.port}"  # the manifest cannot move Host
    assert seen["path"] == "/echo/T-1001"
    assert json.loads(seen["body"]) == {"limit": 5}
    assert result["method"] == "GET"
    assert result["path"] == "/echo/T-1001"


def test_raw_credential_in_a_custom_header(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    spec = tool(upstream.base + "/echo", credential={"env": "X", "header": "X-Api-Key", "scheme": None})
    call(transport, spec)
    headers = upstream.requests[-1]["headers"]
    assert headers["X-Api-Key"] == SECRET
    assert "Authorization" not in headers


def test_body_modes(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    call(transport, tool(upstream.base + "/echo", method="POST"), {"a": 1, "nested": {"b": [1, 2]}})
    assert json.loads(upstream.requests[-1]["body"]) == {"a": 1, "nested": {"b": [1, 2]}}
    call(
        transport,
        tool(upstream.base + "/echo?fixed=1", body="query"),
        {"q": "a b&c", "tags": ["x", "y"], "flag": True, "skip": None, "obj": {"k": 1}},
    )
    path = upstream.requests[-1]["path"]
    assert parse_qs(urlsplit(path).query) == {
        "fixed": ["1"],
        "q": ["a b&c"],
        "tags": ["x", "y"],
        "flag": ["true"],
        "obj": ['{"k":1}'],
    }
    assert upstream.requests[-1]["body"] == ""
    call(transport, tool(upstream.base + "/echo", method="DELETE", body="none"), {"ignored": 1})
    assert upstream.requests[-1]["body"] == ""
    assert upstream.requests[-1]["path"] == "/echo"
    call(transport, tool(upstream.base + "/echo", method="POST"))
    assert upstream.requests[-1]["body"] == "{}"


def test_answers_are_shaped_into_objects(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    assert call(transport, tool(upstream.base + "/list")) == {"value": [1, 2, 3]}
    assert call(transport, tool(upstream.base + "/text")) == {"text": "plain words"}
    assert call(transport, tool(upstream.base + "/empty")) == {}
    assert refused(transport, tool(upstream.base + "/badjson")).code == "upstream_protocol"
    big = refused(transport, tool(upstream.base + "/big"))
    assert big.code == "upstream_response_too_large"


def test_error_status_names_the_status_with_a_scrubbed_excerpt(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    err = refused(transport, tool(upstream.base + "/status/401"))
    assert err.code == "upstream_status"
    assert err.details["status"] == 401
    assert "401" in err.message
    assert '"error": "no"' in err.message
    assert "Bearer [REDACTED]" in err.message  # the upstream echoed the credential; we did not


@pytest.mark.parametrize("pad", [290, 4096 - 10, 4096 + len(SECRET) - 10, 64 * 1024 - 10])
@pytest.mark.parametrize("status", [200, 400])
def test_a_credential_is_never_cut_in_two_at_a_truncation(upstream, transports, pad, status) -> None:
    # Error excerpts come from the first 4 KiB, text results are cut at 64 Ki characters: a
    # credential straddling either cut must not leave its first characters behind.
    transport = transports(policy_for(upstream))
    spec = tool(f"{upstream.base}/pad/{status}?pad={pad}")
    text = call(transport, spec)["text"] if status == 200 else refused(transport, spec).message
    assert SECRET[:6] not in text


def test_a_bad_credential_value_is_refused_without_quoting_it(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    spec = tool(upstream.base + "/echo")
    bad = "line1\r\nX-Injected: yes"
    with pytest.raises(ConfigError) as err:
        transport.call(spec, {}, ctx(spec, credential=bad))
    assert bad not in str(err.value)
    assert "line1" not in str(err.value)
    assert upstream.requests == []


# ---- URL templates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["../admin", "a/b?c=d#frag", "@evil.example", "x:y@evil.example", "%2e%2e%2fadmin", "T 1\r\nHost: evil"],
)
def test_template_values_stay_one_path_segment(upstream, transports, value) -> None:
    transport = transports(policy_for(upstream))
    result = call(transport, tool(upstream.base + "/echo/tickets/{ticket_id}/view"), {"ticket_id": value})
    seen = upstream.requests[-1]
    assert seen["path"] == f"/echo/tickets/{quote(value, safe='')}/view"
    assert unquote(seen["path"].split("/")[3]) == value
    assert seen["headers"]["Host"] == f"127.0.0.1:{upstream.port}"
    assert result["path"] == seen["path"]


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_dot_segments_and_empty_values_are_refused(upstream, transports, value) -> None:
    transport = transports(policy_for(upstream))
    err = refused(transport, tool(upstream.base + "/echo/tickets/{ticket_id}"), {"ticket_id": value})
    assert err.code == "upstream_bad_arguments"
    assert upstream.requests == []


def test_template_problems(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    assert refused(transport, tool(upstream.base + "/echo/{id}"), {}).code == "upstream_bad_arguments"
    assert (
        refused(transport, tool(upstream.base + "/echo/{id}"), {"id": {"a": 1}}).code
        == "upstream_bad_arguments"
    )
    with pytest.raises(ConfigError, match="path and query only"):
        call(transport, tool("http://{tenant}.example/x"), {"tenant": "evil"})
    with pytest.raises(ConfigError):
        call(transport, tool("127.0.0.1/no-scheme"))
    # Values in the query part may be empty: only path segments are guarded.
    call(transport, tool(upstream.base + "/echo?q={q}"), {"q": ""})
    assert upstream.requests[-1]["path"] == "/echo?q="


# ---- egress ------------------------------------------------------------------------------------


def test_rules_parse_and_match() -> None:
    assert HostRule.parse("API.Example.com.") == HostRule("api.example.com")
    assert HostRule.parse("*.example.com:8443") == HostRule("*.example.com", port=8443)
    assert HostRule.parse("[::1]:80") == HostRule("::1", port=80)
    assert HostRule.parse("h:*") == HostRule("h", any_port=True)
    wildcard = HostRule.parse("*.example.com")
    assert wildcard.matches("a.b.example.com", 443, 443)
    assert not wildcard.matches("example.com", 443, 443)
    assert not wildcard.matches("evilexample.com", 443, 443)
    assert not wildcard.matches("a.example.com", 8443, 443)  # no port: the scheme's default only
    for bad in ["", "a/b", "user@host", "*", "a.*.com", "h:99999", "[::1"]:
        with pytest.raises(ConfigError):
            HostRule.parse(bad)
    with pytest.raises(ConfigError):
        EgressPolicy.from_config([], ["10.0.0.1/8"])


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 wrapping 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("192.0.2.1", ""),  # documentation range: refused as not globally routable
    ],
)
def test_blocked_address_classes(address, why) -> None:
    import ipaddress

    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None
    assert why in problem
    assert address_problem(ipaddress.ip_address("93.184.216.34")) is None
    assert address_problem(ipaddress.ip_address("::ffff:93.184.216.34")) is None


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://192.168.1.1/", "192.168.1.1"),
        ("http://[::1]:{port}/echo", "[::1]:{port}"),
        ("http://[::ffff:127.0.0.1]:{port}/echo", "[::ffff:127.0.0.1]:{port}"),
        ("http://localhost:{port}/echo", "localhost:{port}"),
        ("http://0.0.0.0:{port}/echo", "0.0.0.0:{port}"),
    ],
)
def test_internal_addresses_are_refused_even_when_allowlisted(
    upstream, transports, connects, url, allow
) -> None:
    # Loopback is not an allowed CIDR here, so even our own server is out of bounds.
    egress = EgressPolicy.from_config([allow.format(port=upstream.port)], [])
    transport = transports(egress)
    err = refused(transport, tool(url.format(port=upstream.port)))
    assert err.code == "egress_denied"
    assert "resolves to" in err.message
    assert connects == []
    assert upstream.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://[::1]:{port}/echo",
        "http://localhost:{port}/echo",
        "https://not-allowed.example/",
        "http://127.0.0.1:{port}/echo",
        "ftp://127.0.0.1:{port}/",
    ],
)
def test_hosts_off_the_allowlist_are_refused(upstream, transports, connects, url) -> None:
    egress = EgressPolicy.from_config(["api.example.com", f"127.0.0.1:{upstream.port + 1}"], ["127.0.0.0/8"])
    err = refused(transports(egress), tool(url.format(port=upstream.port)))
    assert err.code == "egress_denied"
    assert connects == []
    assert upstream.requests == []


def test_allowed_name_resolving_to_a_blocked_address_is_refused(
    upstream, transports, connects, monkeypatch
) -> None:
    fake_dns(
        monkeypatch,
        {
            "api.partner.test": lambda: ["10.0.0.7"],
            "half.partner.test": lambda: ["127.0.0.1", "169.254.169.254"],
        },
    )
    egress = EgressPolicy.from_config([f"*.partner.test:{upstream.port}"], ["127.0.0.1/32"])
    transport = transports(egress)
    for host, bad in [("api.partner.test", "10.0.0.7"), ("half.partner.test", "169.254.169.254")]:
        err = refused(transport, tool(f"http://{host}:{upstream.port}/echo"))
        assert err.code == "egress_denied"
        assert bad in err.message
        assert host in err.message
    assert connects == []
    assert upstream.requests == []


def test_connections_go_to_the_checked_address_with_the_real_host_name(
    upstream, transports, connects, monkeypatch
) -> None:
    fake_dns(monkeypatch, {"api.partner.test": lambda: ["127.0.0.1"]})
    egress = EgressPolicy.from_config([f"api.partner.test:{upstream.port}"], ["127.0.0.1/32"])
    result = call(transports(egress), tool(f"http://api.partner.test:{upstream.port}/echo"))
    assert result["headers"]["Host"] == f"api.partner.test:{upstream.port}"
    assert connects == [("127.0.0.1", upstream.port)]


def test_dns_rebinding_between_check_and_connect_is_caught(
    upstream, transports, connects, monkeypatch
) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    fake_dns(monkeypatch, {"rebind.partner.test": lambda: next(answers)})
    egress = EgressPolicy.from_config([f"rebind.partner.test:{upstream.port}"], ["127.0.0.1/32"])
    err = refused(transports(egress), tool(f"http://rebind.partner.test:{upstream.port}/echo"))
    assert err.code == "egress_denied"
    assert "169.254.169.254" in err.message
    assert connects == []
    assert upstream.requests == []


# ---- redirects ---------------------------------------------------------------------------------


def test_redirect_to_a_blocked_host_is_refused(upstream, transports, connects) -> None:
    transport = transports(policy_for(upstream, extra_hosts=("169.254.169.254",)))
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://elsewhere.example/",
    ]:
        err = refused(transport, tool(f"{upstream.base}/redirect/302?to={quote(target, safe='')}"))
        assert err.code == "egress_denied"
    assert set(connects) == {("127.0.0.1", upstream.port)}
    assert len(upstream.requests) == 3


def test_redirects_are_followed_up_to_three_times(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    result = call(
        transport,
        tool(f"{upstream.base}/redirect/307?to={quote('/echo/next', safe='')}", method="POST"),
        {"a": 1},
    )
    assert result["path"] == "/echo/next"
    assert result["method"] == "POST"
    assert json.loads(result["body"]) == {"a": 1}
    assert upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"  # same origin
    result = call(
        transport,
        tool(f"{upstream.base}/redirect/303?to={quote('/echo/seen', safe='')}", method="POST"),
        {"a": 1},
    )
    assert result["method"] == "GET"
    assert result["body"] == ""
    upstream.requests.clear()
    err = refused(transport, tool(f"{upstream.base}/loop"))
    assert err.code == "upstream_redirects"
    assert len(upstream.requests) == 4  # the request and three redirects


def test_credential_is_not_sent_to_another_origin(upstream, upstream2, transports) -> None:
    transport = transports(policy_for(upstream, upstream2))
    result = call(
        transport, tool(f"{upstream.base}/redirect/302?to={quote(upstream2.base + '/echo', safe='')}")
    )
    assert result["path"] == "/echo"
    headers = upstream2.requests[-1]["headers"]
    assert "Authorization" not in headers
    assert headers["Idempotency-Key"] == "idem-123"


# ---- timeouts, retries, breaker ----------------------------------------------------------------


def test_timeout_fails_fast_instead_of_hanging(upstream, transports) -> None:
    transport = transports(policy_for(upstream))
    started = time.monotonic()
    err = refused(transport, tool(upstream.base + "/sleep/5", timeout_s=0.5, idempotent=True))
    assert err.code == "upstream_timeout"
    assert time.monotonic() - started < 2.5
    assert len(upstream.requests) == 1  # a read timeout is never retried: the request may have acted


@pytest.mark.parametrize(("idempotent", "expected"), [(True, 3), (False, 1)])
def test_retries_only_for_idempotent_tools(upstream, transports, idempotent, expected) -> None:
    transport = transports(policy_for(upstream))
    for status in (502, 503, 504):
        upstream.requests.clear()
        err = refused(transport, tool(f"{upstream.base}/status/{status}", idempotent=idempotent))
        assert err.details["status"] == status
        assert len(upstream.requests) == expected
    upstream.requests.clear()
    refused(transport, tool(f"{upstream.base}/status/500", idempotent=idempotent))
    assert len(upstream.requests) == 1  # 500 is not a "try again" status


def test_a_retry_can_succeed(upstream, transports) -> None:
    upstream.queue[:] = [503, 502]
    assert call(transports(policy_for(upstream)), tool(upstream.base + "/queue", idempotent=True)) == {
        "status": 200
    }
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(("idempotent", "expected"), [(True, 3), (False, 1)])
def test_connection_failures_are_retried_only_for_idempotent_tools(
    transports, connects, idempotent, expected
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = transports(EgressPolicy.from_config([f"127.0.0.1:{port}"], ["127.0.0.1/32"]))
    err = refused(transport, tool(f"http://127.0.0.1:{port}/x", idempotent=idempotent))
    assert err.code == "upstream_unreachable"
    assert len(connects) == expected


def test_breaker_opens_after_failures_and_recovers_after_cool_down(upstream, transports) -> None:
    clock = FakeClock()
    breaker = CircuitBreakerRegistry(failure_threshold=5, cooldown_s=30, clock=clock)
    transport = transports(policy_for(upstream), breaker=breaker)
    spec = tool(upstream.base + "/queue")
    upstream.queue[:] = [503] * 5
    for _ in range(5):
        assert refused(transport, spec).code == "upstream_status"
    assert refused(transport, spec).code == "circuit_open"
    assert len(upstream.requests) == 5  # the open breaker sent nothing
    clock.now += 29
    assert refused(transport, spec).code == "circuit_open"
    clock.now += 1
    upstream.queue[:] = [504]
    assert refused(transport, spec).code == "upstream_status"  # the trial failed: open again
    assert refused(transport, spec).code == "circuit_open"
    clock.now += 30
    assert call(transport, spec) == {"status": 200}
    assert breaker.state(CircuitBreakerRegistry.key_for(upstream.base)) == "closed"
    assert len(upstream.requests) == 7


def test_client_errors_and_refusals_do_not_open_the_breaker(upstream, transports) -> None:
    breaker = CircuitBreakerRegistry(failure_threshold=2, cooldown_s=30)
    transport = transports(policy_for(upstream), breaker=breaker)
    for _ in range(3):
        assert refused(transport, tool(upstream.base + "/status/404")).code == "upstream_status"
        assert (
            refused(transport, tool(upstream.base + "/x/{id}"), {"id": ".."}).code == "upstream_bad_arguments"
        )
    assert breaker.state(CircuitBreakerRegistry.key_for(upstream.base)) == "closed"


def test_an_injected_client_still_gets_the_egress_check(upstream, transports, connects) -> None:
    client = httpx.Client(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"mock": True}))
    )
    transport = transports(policy_for(upstream), client=client)
    assert call(transport, tool(upstream.base + "/echo")) == {"mock": True}
    assert refused(transport, tool("http://169.254.169.254/")).code == "egress_denied"
    client.close()


# ---- end to end: the pipeline never stores, logs or returns the secret -------------------------


MANIFEST = """
name: http-tools
version: "1"
owner: ops@example.com
objective: Exercise the HTTP transport.
success_metric: {{name: calls}}
environments: [production]
agents:
  - {{id: triage-bot, environment: production, roles: [reader]}}
roles:
  reader: {{verbs: [read]}}
tools:
  - name: echo.get
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string}}, note: {{type: string}}}}
      required: [ticket_id]
      additionalProperties: false
    upstream: {{kind: http, method: POST, url: "{base}/echo/{{ticket_id}}"}}
    credential: {{env: TEST_UPSTREAM_TOKEN}}
  - name: echo.denied
    verb: read
    upstream: {{kind: http, method: GET, url: "{base}/status/403", body: none}}
    credential: {{env: TEST_UPSTREAM_TOKEN}}
  - name: echo.slow
    verb: read
    timeout_s: 0.5
    upstream: {{kind: http, method: GET, url: "{base}/sleep/5", body: none}}
    credential: {{env: TEST_UPSTREAM_TOKEN}}
  - name: echo.metadata
    verb: read
    upstream: {{kind: http, method: GET, url: "{base}/redirect/302?to=http%3A%2F%2F169.254.169.254%2F"}}
    credential: {{env: TEST_UPSTREAM_TOKEN}}
rules:
  allow:
    - {{id: reads, verb: read}}
budgets:
  per_run: {{max_steps: 100, max_tool_calls: 100}}
"""


def test_pipeline_end_to_end_never_keeps_the_secret(
    db_url, tmp_path: Path, upstream, monkeypatch, caplog
) -> None:
    from conftest import Harness

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_UPSTREAM_TOKEN", SECRET)
    path = tmp_path / "workflow.yaml"
    path.write_text(textwrap.dedent(MANIFEST.format(base=upstream.base)))
    h = Harness(db_url, manifest=path)
    try:
        h.runtime.transports["http"] = HttpTransport(
            egress=policy_for(upstream, extra_hosts=("169.254.169.254",)), breaker=CircuitBreakerRegistry()
        )
        run = h.run()
        ok = h.act(run, "echo.get", {"ticket_id": "T-1", "note": "hello"}, idempotency_key="agent-key-1")
        assert ok.status == "executed", ok
        # The upstream really received the secret, and an idempotency key derived from the agent's
        # (the same on every retry of this action, distinct from other agents' keys).
        sent = upstream.requests[-1]["headers"]
        assert sent["Authorization"] == f"Bearer {SECRET}"
        assert sent["Idempotency-Key"].startswith("il1-")
        assert "agent-key-1" not in sent["Idempotency-Key"]
        # It echoed the secret back in several places; the result the agent sees has none of it.
        assert ok.result["path"] == "/echo/T-1"
        assert "[REDACTED]" in ok.result["note"]

        denied = h.act(run, "echo.denied", {})
        assert denied.status == "failed"
        assert "403" in (denied.error or "")
        assert "[REDACTED]" in (denied.error or "")

        started = time.monotonic()
        slow = h.act(run, "echo.slow", {})
        assert slow.status == "failed"
        assert "did not answer within 0.5s" in (slow.error or "")
        assert time.monotonic() - started < 3

        meta = h.act(run, "echo.metadata", {})
        assert meta.status == "failed"
        assert "egress denied" in (meta.error or "")

        for result in (ok, denied, slow, meta):
            assert SECRET not in result.model_dump_json()
        with h.il.engine.connect() as conn:
            for table in t.metadata.sorted_tables:
                rows = conn.execute(select(table)).all()
                assert SECRET not in repr(rows), f"secret stored in {table.name}"
            assert conn.execute(select(t.steps)).all()  # the dump did look at real rows
        for record in caplog.records:
            assert SECRET not in record.getMessage()
            assert SECRET not in (record.exc_text or "")
    finally:
        h.close()
