"""HTTP APIs as tools: a URL template, a method, and the credential the agent never sees.

Arguments fill the URL template (each value percent-encoded as one opaque segment, so no argument
can change the host or climb the path); the rest travel as a JSON body, as a query string, or not
at all. Every hop (the first request and each redirect) passes the egress policy, and connections
go to the addresses that policy checked.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from interlock._internal.gateway.egress import EgressPolicy, PinnedHTTPTransport
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.limits.breaker import CircuitBreakerRegistry, Permit
from interlock._internal.manifest.models import HttpUpstream, ToolSpec
from interlock.exceptions import ConfigError, UpstreamError

log = logging.getLogger("interlock.transport.http")

MAX_RESPONSE_BYTES = 2 * 1024 * 1024
MAX_TEXT_CHARS = 64 * 1024
MAX_ERROR_BYTES = 4 * 1024  # how much of an error body is read, for the excerpt
EXCERPT_CHARS = 300
MAX_REDIRECTS = 3
MAX_RETRIES = 2
RETRY_STATUSES = frozenset({502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Set by the client from the URL and body; a manifest must not override them.
_RESERVED_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_HEADER_SAFE = re.compile(r"^[\x20-\x7e\t]*$")


class _Failure(Exception):
    """One attempt's failure, with what it means for retries and for the circuit breaker.

    ``upstream_answered``: True, it answered (a breaker success); False, it did not (a breaker
    failure); None, nothing reached it (neutral).
    """

    def __init__(
        self, error: UpstreamError, *, retryable: bool = False, upstream_answered: bool | None = True
    ):
        super().__init__(error.message)
        self.error = error
        self.retryable = retryable
        self.upstream_answered = upstream_answered


def fill_url(template: str, arguments: dict[str, Any], *, tool: str) -> tuple[httpx.URL, dict[str, Any]]:
    """The request URL and the arguments the template did not consume."""
    scheme_end = template.find("://")
    if scheme_end < 0:
        raise ConfigError(f"{tool}: upstream.url {template!r} needs a scheme (https://…)")
    authority_end = len(template)
    for sep in "/?#":
        at = template.find(sep, scheme_end + 3)
        if at >= 0:
            authority_end = min(authority_end, at)
    query_start = template.find("?", authority_end)
    query_start = len(template) if query_start < 0 else query_start
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if match.start() < authority_end:
            raise ConfigError(f"{tool}: upstream.url: placeholders are allowed in the path and query only")
        if name not in arguments:
            raise _bad_arguments(tool, f"argument {name!r} is required by the upstream URL")
        value = arguments[name]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise _bad_arguments(tool, f"argument {name!r} must be a string or number to go in the URL")
        if match.start() < query_start and text in ("", ".", ".."):
            # "" would turn /items/{id} into the collection, ".." into its parent.
            raise _bad_arguments(tool, f"argument {name!r} may not be {text!r} in the URL path")
        used.add(name)
        return quote(text, safe="")

    filled = _PLACEHOLDER.sub(substitute, template)
    try:
        url = httpx.URL(filled)
        base = httpx.URL(template[:authority_end])
    except httpx.InvalidURL as exc:
        raise ConfigError(f"{tool}: upstream.url is not a valid URL: {exc}") from exc
    if (url.scheme, url.raw_host, url.port) != (base.scheme, base.raw_host, base.port):
        raise _bad_arguments(tool, "the arguments would change the upstream's host")  # defence in depth
    return url, {k: v for k, v in arguments.items() if k not in used}


def _bad_arguments(tool: str, message: str) -> UpstreamError:
    return UpstreamError(f"{tool}: {message}", code="upstream_bad_arguments")


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "[REDACTED]") if secret else text


def _query_params(rest: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, value in rest.items():
        if value is None:
            continue
        if isinstance(value, dict) or (
            isinstance(value, list) and any(isinstance(v, dict | list) for v in value)
        ):
            params[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        else:
            params[key] = value
    return params


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


class HttpTransport:
    """Calls :class:`HttpUpstream` tools. Thread-safe; one per server is enough.

    ``client`` replaces the built-in one (custom TLS settings, tests); it should be built with
    ``transport=PinnedHTTPTransport(egress)`` to keep connections pinned to checked addresses, and
    must not follow redirects itself. Without one, the transport builds its own on first use.

    Retries (at most two, with a short exponential backoff) happen only for tools declared
    ``idempotent``, and only when the request cannot have done anything or the upstream says it
    did not: connection failures, 502, 503 and 504. ``ctx.timeout_s`` bounds the whole call,
    retries and redirects included.
    """

    def __init__(
        self,
        *,
        egress: EgressPolicy,
        breaker: CircuitBreakerRegistry,
        client: httpx.Client | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        backoff_s: float = 0.1,
        user_agent: str = "interlock",
    ) -> None:
        self._egress = egress
        self._breaker = breaker
        self.breaker = breaker
        self._client = client
        self._owns_client = client is None
        self._max_bytes = max_response_bytes
        self._backoff_s = backoff_s
        self._user_agent = user_agent
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(
                        transport=PinnedHTTPTransport(self._egress),
                        follow_redirects=False,
                        trust_env=False,  # an environment proxy would bypass the egress pin
                    )
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._owns_client:
                self._client.close()
                self._client = None

    # ---- one call ----------------------------------------------------------------------------

    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        upstream = tool.upstream
        if not isinstance(upstream, HttpUpstream):
            raise UpstreamError(f"tool {tool.name} is not bound to an HTTP upstream")
        url, rest = fill_url(upstream.url, arguments, tool=tool.name)
        headers = self._headers(tool, upstream, ctx)
        deadline = time.monotonic() + ctx.timeout_s
        permit = self._breaker.acquire(CircuitBreakerRegistry.key_for(url))
        attempts = 1 + (MAX_RETRIES if tool.idempotent else 0)
        try:
            for attempt in range(attempts):
                try:
                    result = self._attempt(tool, upstream, url, rest, headers, ctx, deadline)
                except _Failure as failure:
                    delay = self._backoff_s * (2**attempt) * (0.5 + random.random() / 2)
                    if failure.retryable and attempt + 1 < attempts and time.monotonic() + delay < deadline:
                        log.info(
                            "%s: attempt %d failed (%s); retrying", tool.name, attempt + 1, failure.error.code
                        )
                        time.sleep(delay)
                        continue
                    self._settle(permit, failure.upstream_answered)
                    raise self._clean(failure.error, ctx.credential) from None
                permit.success()
                return result
        finally:
            permit.release()  # no-op once an outcome was reported; frees a half-open slot otherwise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _settle(permit: Permit, answered: bool | None) -> None:
        if answered is None:
            permit.release()
        elif answered:
            permit.success()
        else:
            permit.failure()

    @staticmethod
    def _clean(error: UpstreamError, secret: str | None) -> UpstreamError:
        # The original error may quote upstream text; rebuilt without a cause so no chained
        # exception can carry the credential into a traceback or log either.
        return UpstreamError(_scrub(error.message, secret), code=error.code, details=error.details)

    def _headers(self, tool: ToolSpec, upstream: HttpUpstream, ctx: CallContext) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        headers.update({k: v for k, v in upstream.headers.items() if k.lower() not in _RESERVED_HEADERS})
        if ctx.idempotency_key:
            headers["Idempotency-Key"] = ctx.idempotency_key
        if tool.credential is not None:
            secret = ctx.credential
            if not secret:
                raise ConfigError(f"{tool.name}: the credential was not resolved")
            if not _HEADER_SAFE.match(secret):
                # httpx would quote the bad value in its error; say what is wrong, never the value.
                raise ConfigError(f"{tool.name}: the credential holds characters a header cannot carry")
            scheme = tool.credential.scheme
            headers[tool.credential.header] = f"{scheme} {secret}" if scheme else secret
        return headers

    def _attempt(
        self,
        tool: ToolSpec,
        upstream: HttpUpstream,
        url: httpx.URL,
        rest: dict[str, Any],
        headers: dict[str, str],
        ctx: CallContext,
        deadline: float,
    ) -> Any:
        method: str = upstream.method
        json_body: Any = None
        if upstream.body == "json" and (rest or method in ("POST", "PUT", "PATCH")):
            json_body = rest
        elif upstream.body == "query" and rest:
            # Merged, not replaced: httpx's params= would drop a query written in the template.
            url = url.copy_merge_params(_query_params(rest))
        origin = (url.scheme, url.raw_host, url.port)
        credential_header = tool.credential.header if tool.credential is not None else None
        for hop in range(MAX_REDIRECTS + 1):
            host = url.raw_host.decode("ascii")
            started = time.monotonic()
            remaining = deadline - started
            if remaining <= 0:
                raise self._timeout(tool, host, ctx, answered=hop > 0 or None)
            try:
                # Checked per hop, pooled connection or not, so a refusal is immediate and names
                # the reason; opening a connection checks again and connects to what it checked.
                self._egress.check_url(url)
                request = self.client.build_request(
                    method,
                    url,
                    headers=headers,
                    json=json_body,
                    timeout=httpx.Timeout(remaining),
                )
                response = self.client.send(request, stream=True, follow_redirects=False)
            except UpstreamError as exc:
                # Refused before anything was sent. After a redirect the upstream did answer.
                raise _Failure(exc, upstream_answered=True if hop else None) from exc
            except httpx.HTTPError as exc:
                raise self._transport_failure(tool, host, ctx, exc) from exc
            try:
                status = response.status_code
                location = response.headers.get("location")
                if status in REDIRECT_STATUSES and location:
                    if hop == MAX_REDIRECTS:
                        raise _Failure(
                            UpstreamError(
                                f"{tool.name}: {host} redirected more than {MAX_REDIRECTS} times",
                                code="upstream_redirects",
                            )
                        )
                    try:
                        target = url.join(location)
                    except httpx.InvalidURL as exc:
                        raise _Failure(
                            UpstreamError(
                                f"{tool.name}: {host} redirected to an invalid URL", code="upstream_protocol"
                            )
                        ) from exc
                    if url.scheme == "https" and target.scheme != "https":
                        # The arguments would cross the network in clear text.
                        raise _Failure(
                            UpstreamError(
                                f"{tool.name}: {host} redirected from https to http",
                                code="upstream_redirects",
                            )
                        )
                    url = target
                    if status == 303 or (status in (301, 302) and method not in ("GET", "HEAD")):
                        method, json_body = "GET", None
                    if credential_header and (url.scheme, url.raw_host, url.port) != origin:
                        # The credential belongs to the configured origin, never to where it points.
                        headers = {k: v for k, v in headers.items() if k.lower() != credential_header.lower()}
                    continue
                # An error body is read in part, for its excerpt; the extra bytes make sure an
                # echoed credential is never cut in two at the end of what was read (see _status_failure).
                limit = (
                    self._max_bytes if 200 <= status < 300 else MAX_ERROR_BYTES + len(ctx.credential or "")
                )
                body = self._read(response, tool=tool, host=host, limit=limit, deadline=deadline, ctx=ctx)
            except httpx.HTTPError as exc:
                raise self._transport_failure(tool, host, ctx, exc) from exc
            finally:
                response.close()
            log.debug(
                "%s: %s %s -> %d in %.1f ms",
                tool.name,
                method,
                host,
                status,
                (time.monotonic() - started) * 1000,
            )
            if 200 <= status < 300:
                return self._parse(response, body, tool=tool, host=host, secret=ctx.credential)
            raise self._status_failure(tool, host, response, body, ctx)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- reading and judging answers ---------------------------------------------------------

    def _read(
        self,
        response: httpx.Response,
        *,
        tool: ToolSpec,
        host: str,
        limit: int,
        deadline: float,
        ctx: CallContext,
    ) -> bytes:
        declared = response.headers.get("content-length", "")
        success = 200 <= response.status_code < 300
        if success and declared.isdigit() and int(declared) > limit:
            raise self._too_large(tool, host)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                if not success:
                    return bytes(body[:limit])  # enough for an excerpt
                raise self._too_large(tool, host)
            if time.monotonic() > deadline:
                # A slow trickle of bytes would otherwise reset the read timeout forever.
                raise self._timeout(tool, host, ctx, answered=False)
        return bytes(body)

    def _parse(
        self, response: httpx.Response, body: bytes, *, tool: ToolSpec, host: str, secret: str | None
    ) -> Any:
        if not body.strip():
            return {}
        ctype = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype.endswith(("/json", "+json")) or (not ctype and body.lstrip()[:1] in (b"{", b"[")):
            try:
                value = json.loads(body, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                raise _Failure(
                    UpstreamError(
                        f"{tool.name}: {host} sent invalid JSON: {exc}"[:300], code="upstream_protocol"
                    )
                ) from exc
            return value if isinstance(value, dict) else {"value": value}
        # Masked here, before the cut: a credential cut in half would escape the pipeline's masking.
        text = _scrub(_decode(body, response.charset_encoding), secret)
        if len(text) > MAX_TEXT_CHARS:
            return {"text": text[:MAX_TEXT_CHARS], "truncated": True}
        return {"text": text}

    def _status_failure(
        self, tool: ToolSpec, host: str, response: httpx.Response, body: bytes, ctx: CallContext
    ) -> _Failure:
        status = response.status_code
        text = _scrub(_decode(body, response.charset_encoding), ctx.credential)
        if len(body) >= MAX_ERROR_BYTES and ctx.credential:
            # The read stopped mid-body; its last bytes could begin an echoed credential.
            text = text[: -len(ctx.credential)]
        excerpt = " ".join(text.split())[:EXCERPT_CHARS]
        message = f"{tool.name}: {host} answered {status} {response.reason_phrase}".rstrip()
        if excerpt:
            message += f": {excerpt}"
        error = UpstreamError(
            _scrub(message, ctx.credential), code="upstream_status", details={"status": status, "host": host}
        )
        return _Failure(error, retryable=status in RETRY_STATUSES, upstream_answered=status < 500)

    def _transport_failure(
        self, tool: ToolSpec, host: str, ctx: CallContext, exc: httpx.HTTPError
    ) -> _Failure:
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            # Nothing was sent: safe to retry for an idempotent tool.
            code = "upstream_timeout" if isinstance(exc, httpx.ConnectTimeout) else "upstream_unreachable"
            error = UpstreamError(
                _scrub(f"{tool.name}: cannot connect to {host}: {exc or type(exc).__name__}", ctx.credential),
                code=code,
                details={"host": host},
            )
            return _Failure(error, retryable=True, upstream_answered=False)
        if isinstance(exc, httpx.TimeoutException):
            return self._timeout(tool, host, ctx, answered=False)
        error = UpstreamError(
            _scrub(f"{tool.name}: request to {host} failed: {type(exc).__name__}: {exc}", ctx.credential)[
                :500
            ],
            code="upstream_error",
            details={"host": host},
        )
        return _Failure(error, upstream_answered=False)

    @staticmethod
    def _timeout(tool: ToolSpec, host: str, ctx: CallContext, *, answered: bool | None) -> _Failure:
        error = UpstreamError(
            f"{tool.name}: {host} did not answer within {ctx.timeout_s:g}s",
            code="upstream_timeout",
            details={"host": host},
        )
        return _Failure(error, upstream_answered=answered)

    def _too_large(self, tool: ToolSpec, host: str) -> _Failure:
        return _Failure(
            UpstreamError(
                f"{tool.name}: {host} sent more than {self._max_bytes} bytes",
                code="upstream_response_too_large",
            )
        )


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


__all__ = ["HttpTransport", "fill_url"]
