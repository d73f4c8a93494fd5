"""The Python SDK for a remote Interlock: the embedded API's shape, over HTTP.

    with Client("https://interlock.internal", client_id="triage-bot", client_secret=secret) as il:
        run = il.start_run(trigger={"ticket": "T-1001"})
        result = il.act(run.id, "tickets.get", {"ticket_id": "T-1001"})

Decisions are results, not exceptions: a denied, invalid, rate-limited, escalated or failed action
comes back as an :class:`ActionResult` whatever its HTTP status. What raises is what stops the
conversation itself: a server that cannot be reached (``server_unreachable``), credentials it
refuses (:class:`AuthenticationError`), and server-side failures (5xx).

Tokens are fetched with the client credentials on first use, refreshed shortly before they expire,
and refreshed once more when the server answers 401 ``token_expired``.

Retries: a request that never reached the server (connection refused, connect timeout) is retried
for every method. Reads and ``act`` are retried on any transport error and on 503 as well. For
``act`` that is safe because it always carries an idempotency key — the caller's, or a fresh UUID4
the client generates for that call — so the server runs the action at most once and answers a
retry with the recorded outcome. Reuse your own key across processes or restarts; the generated one
only covers this call's retries.

This module holds what the sync and the async client share (requests, parsing, error mapping);
:mod:`interlock._internal.sdk.aclient` is the async twin.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from interlock import __version__
from interlock._internal.approvals.models import SETTLED_EXECUTIONS, AgentApprovalView
from interlock._internal.gateway.models import ActionResult, ModelCallResult, Run, RunView, ToolInfo
from interlock.exceptions import (
    ActionDenied,
    ArgumentsInvalid,
    AuthenticationError,
    ConflictError,
    InterlockError,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    StorageError,
    TokenScopeError,
    UpstreamError,
)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRIES = 2
DEFAULT_APPROVAL_WAIT_S = 300.0
# The server answers a long poll after at most this long; the client asks again until its own deadline.
MAX_POLL_S = 30.0
_BACKOFF_S = 0.25
_MAX_REFRESH_MARGIN_S = 30.0

Retry = Literal["connect", "any"]


# ---- what one request is -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One API request, independent of sync or async sending."""

    method: str
    path: str
    json: Any = None
    params: Mapping[str, Any] | None = None
    # "connect": retried only when it surely never reached the server; "any": on any transport
    # error and on 503 (the request is idempotent).
    retry: Retry = "connect"
    timeout: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def path_id(value: str) -> str:
    return quote(value, safe="")


def action_call(
    run_id: str,
    tool: str,
    arguments: Mapping[str, Any],
    *,
    idempotency_key: str | None,
    reasoning: str | None,
    confidence: float | None,
    evidence: Sequence[str] | None,
) -> Call:
    body: dict[str, Any] = {
        "tool": tool,
        "arguments": dict(arguments),
        # Always a key, so a retry after a lost response can never run the action twice.
        "idempotency_key": idempotency_key if idempotency_key is not None else f"sdk-{uuid.uuid4()}",
    }
    if reasoning is not None:
        body["reasoning"] = reasoning
    if confidence is not None:
        body["confidence"] = confidence
    if evidence is not None:
        body["evidence"] = list(evidence)
    return Call("POST", f"/v1/runs/{path_id(run_id)}/actions", json=body, retry="any")


def model_call_body(
    *,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float | None,
    duration_ms: float | None,
    task: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input_tokens": input_tokens, "output_tokens": output_tokens}
    if cost_usd is not None:
        body["cost_usd"] = cost_usd
    if duration_ms is not None:
        body["duration_ms"] = duration_ms
    if task is not None:
        body["task"] = task
    return body


def finish_body(state: str, reason: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"state": state}
    if reason is not None:
        body["reason"] = reason
    return body


def approval_call(approval_id: str, wait_s: float, *, timeout: float) -> Call:
    return Call(
        "GET",
        f"/v1/approvals/{path_id(approval_id)}",
        params={"wait": round(wait_s, 3)},
        retry="any",
        # The server holds the request up to wait_s before answering.
        timeout=wait_s + timeout,
    )


def approval_settled(view: AgentApprovalView) -> bool:
    """Nothing about the approval will change any more (decided, and executed if approved)."""
    if view.state == "approved":
        return view.execution in SETTLED_EXECUTIONS
    return view.state != "pending"


# ---- tokens --------------------------------------------------------------------------------------


class TokenCache:
    """The current access token and when to stop using it (monotonic clock)."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.renew_at = 0.0

    def current(self) -> str | None:
        return self.token if self.token is not None and time.monotonic() < self.renew_at else None

    def store(self, token: str, expires_in: float) -> None:
        # Renew shortly before expiry so a request never leaves with a token about to lapse.
        margin = min(_MAX_REFRESH_MARGIN_S, max(0.0, expires_in) / 10)
        self.token = token
        self.renew_at = time.monotonic() + max(0.0, expires_in - margin)

    def drop(self, token: str) -> None:
        if self.token == token:
            self.token = None


def token_form(client_id: str, client_secret: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}


def parse_token(response: httpx.Response) -> tuple[str, float]:
    """(access token, seconds to expiry), or the OAuth error as an InterlockError."""
    body = _json(response)
    if response.status_code == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        expires_in = body.get("expires_in")
        return body["access_token"], float(expires_in) if isinstance(expires_in, int | float) else 60.0
    if response.status_code >= 500:
        raise _server_error(response, body)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = str(body["error"])
        message = str(body.get("error_description") or code)
        raise AuthenticationError(f"the token endpoint refused the client credentials: {message}", code=code)
    raise AuthenticationError(
        f"the token endpoint answered {response.status_code} without a token", code="token_request_failed"
    )


# ---- responses -----------------------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_code(response: httpx.Response) -> str | None:
    body = _json(response)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        return code if isinstance(code, str) else None
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _server_error(response: httpx.Response, body: Any) -> InterlockError:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) and isinstance(error.get("code"), str) else None
    message = (
        error.get("message") if isinstance(error, dict) and isinstance(error.get("message"), str) else None
    )
    text = f"Interlock answered {response.status_code}: {message or response.reason_phrase}"
    if response.status_code == 503 and code == "storage_error":
        return StorageError(text, code=code)
    if response.status_code == 502:
        return UpstreamError(text, code=code)
    return InterlockError(text, code=code or f"http_{response.status_code}")


def error_from(response: httpx.Response) -> InterlockError:
    """The InterlockError for a non-2xx answer in the API's one error shape."""
    body = _json(response)
    status = response.status_code
    if status >= 500:
        return _server_error(response, body)
    error = body.get("error") if isinstance(body, dict) else None
    details: dict[str, Any] = dict(error) if isinstance(error, dict) else {}
    code = str(details.pop("code", None) or f"http_{status}")
    message = str(details.pop("message", None) or response.reason_phrase or f"HTTP {status}")
    if status == 401:
        return AuthenticationError(message, code=code, details=details)
    if status == 403:
        if code == "token_scope":
            return TokenScopeError(message, code=code, details=details)
        if code == "denied":
            return ActionDenied(message, code=code, details=details)
        return PermissionDenied(message, code=code, details=details)
    if status == 404:
        return NotFound(message, code=code, details=details)
    if status == 409:
        return ConflictError(message, code=code, details=details)
    if status in (400, 422):
        field_name = details.pop("field", None)
        return ArgumentsInvalid(
            message, field=str(field_name or "request"), details={"code": code, **details}
        )
    if status == 429:
        retry = details.get("retry_after")
        return LimitExceeded(
            message,
            code=code,
            retry_after=float(retry) if isinstance(retry, int | float) else _retry_after(response),
        )
    return InterlockError(message, code=code, details=details)


def parse_model(response: httpx.Response, model: type[Any]) -> Any:
    """A 2xx body as ``model`` (anything else raises the mapped error)."""
    if not response.is_success:
        raise error_from(response)
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise InterlockError(
            f"unexpected answer from {response.request.url.path}: {exc}", code="bad_response"
        ) from exc


def parse_action(response: httpx.Response) -> ActionResult:
    """Every decided action is a result, whatever its status code; errors before a decision raise."""
    body = _json(response)
    if response.is_success:
        payload = body
    elif response.status_code < 500 or response.status_code == 502:
        payload = body.get("action") if isinstance(body, dict) else None
        if payload is None:
            raise error_from(response)
    else:
        raise error_from(response)
    try:
        return ActionResult.model_validate(payload)
    except ValidationError as exc:
        raise InterlockError(f"unexpected action answer: {exc}", code="bad_response") from exc


def parse_tools(response: httpx.Response) -> list[ToolInfo]:
    if not response.is_success:
        raise error_from(response)
    body = _json(response)
    try:
        return [ToolInfo.model_validate(item) for item in body]
    except (TypeError, ValidationError) as exc:
        raise InterlockError(f"unexpected tools answer: {exc}", code="bad_response") from exc


def should_retry(response: httpx.Response, call: Call) -> bool:
    if call.retry != "any":
        return False
    # 503: the database did not answer; 409 in flight: the first attempt of this very key is
    # still executing (our own earlier attempt whose answer was lost).
    return response.status_code == 503 or (
        response.status_code == 409 and error_code(response) == "idempotency_in_flight"
    )


_SURELY_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


def retryable(exc: httpx.HTTPError, call: Call) -> bool:
    return isinstance(exc, _SURELY_UNSENT) or (call.retry == "any" and isinstance(exc, _TRANSIENT))


def backoff(attempt: int, response: httpx.Response | None = None) -> float:
    hinted = _retry_after(response) if response is not None else None
    base = _BACKOFF_S * (2 ** (attempt - 1))
    return min(hinted, 5.0) if hinted is not None else base


def unreachable(base_url: str, exc: httpx.HTTPError) -> InterlockError:
    return InterlockError(
        f"cannot reach Interlock at {base_url}: {type(exc).__name__}: {exc}", code="server_unreachable"
    )


def user_agent() -> str:
    return f"interlock-python/{__version__}"


# ---- the sync client -----------------------------------------------------------------------------


class Client:
    """An agent's connection to a remote Interlock server (sync; see :class:`AsyncClient`).

    ``base_url`` is the server's root (``/v1`` and ``/oauth/token`` are appended). ``transport``
    is passed to :class:`httpx.Client` (tests, proxies, custom TLS). ``retries`` bounds the
    automatic retries of one call (see the module docs for which calls are retried when).
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.timeout = timeout
        self.retries = retries
        self._tokens = TokenCache()
        self._token_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": user_agent()},
        )

    # ---- the agent's API (same shapes as the embedded Interlock, token implied) -----------------

    def start_run(self, trigger: Any = None, *, package: str | None = None) -> Run:
        """Start one run of the agent's workflow; every action then names it. With ``package`` (a
        signed work package) the run is also bound by the package."""
        body: dict[str, Any] = {"trigger": trigger}
        if package is not None:
            body["package"] = package
        run: Run = parse_model(self.send(Call("POST", "/v1/runs", json=body)), Run)
        return run

    def act(
        self,
        run_id: str,
        tool: str,
        arguments: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        reasoning: str | None = None,
        confidence: float | None = None,
        evidence: Sequence[str] | None = None,
    ) -> ActionResult:
        """Submit one action. Every decision comes back as a result (``status`` says which).

        Without ``idempotency_key`` a UUID4 is generated for this call, so the client's own
        retries are safe; pass your own to make retries across processes safe too.
        """
        call = action_call(
            run_id,
            tool,
            arguments,
            idempotency_key=idempotency_key,
            reasoning=reasoning,
            confidence=confidence,
            evidence=evidence,
        )
        return parse_action(self.send(call))

    def get_run(self, run_id: str) -> RunView:
        """The run and its ordered steps."""
        view: RunView = parse_model(
            self.send(Call("GET", f"/v1/runs/{path_id(run_id)}", retry="any")), RunView
        )
        return view

    def finish_run(self, run_id: str, *, state: str = "completed", reason: str | None = None) -> Run:
        """End the run as ``completed`` or ``failed``."""
        call = Call("POST", f"/v1/runs/{path_id(run_id)}/finish", json=finish_body(state, reason))
        run: Run = parse_model(self.send(call), Run)
        return run

    def report_model_call(
        self,
        run_id: str,
        *,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None = None,
        duration_ms: float | None = None,
        task: str | None = None,
    ) -> ModelCallResult:
        """Count a model call against the run's, agent's and workflow's budgets; ``task`` names its
        task class, checked against the manifest's model tiers."""
        body = model_call_body(
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            duration_ms=duration_ms,
            task=task,
        )
        call = Call("POST", f"/v1/runs/{path_id(run_id)}/model-calls", json=body)
        result: ModelCallResult = parse_model(self.send(call), ModelCallResult)
        return result

    def wait_for_approval(
        self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S
    ) -> AgentApprovalView:
        """Long-poll an approval until it is settled — rejected, expired, cancelled, or approved and
        executed (``outcome`` is then the action's result) — or ``timeout_s`` passes, and return
        it as it stands (``state`` may still be ``pending``). ``timeout_s=0`` just reads it."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            wait = min(MAX_POLL_S, max(0.0, deadline - time.monotonic()))
            response = self.send(approval_call(approval_id, wait, timeout=self.timeout))
            view: AgentApprovalView = parse_model(response, AgentApprovalView)
            if approval_settled(view) or time.monotonic() >= deadline:
                return view

    def tools(self) -> list[ToolInfo]:
        """The tools this agent may use, with their input schemas."""
        return parse_tools(self.send(Call("GET", "/v1/tools", retry="any")))

    # ---- plumbing --------------------------------------------------------------------------------

    def access_token(self) -> str:
        """A valid access token, fetched or renewed when needed."""
        token = self._tokens.current()
        if token is not None:
            return token
        with self._token_lock:
            token = self._tokens.current()
            if token is None:
                token = self._fetch_token()
        return token

    def _fetch_token(self) -> str:
        form = token_form(self.client_id, self._secret)
        call = Call("POST", "/oauth/token", retry="any")
        attempt = 0
        while True:
            try:
                response = self._http.post("/oauth/token", data=form)
            except httpx.HTTPError as exc:
                attempt += 1
                if attempt > self.retries or not retryable(exc, call):
                    raise unreachable(self.base_url, exc) from exc
                time.sleep(backoff(attempt))
                continue
            token, expires_in = parse_token(response)
            self._tokens.store(token, expires_in)
            return token

    def send(self, call: Call) -> httpx.Response:
        """Send an authenticated request with the retries ``call`` allows; return the response."""
        attempt = 0
        refreshed = False
        while True:
            token = self.access_token()
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    params=call.params,
                    headers={**call.headers, "Authorization": f"Bearer {token}"},
                    timeout=call.timeout if call.timeout is not None else self.timeout,
                )
            except httpx.HTTPError as exc:
                attempt += 1
                if attempt > self.retries or not retryable(exc, call):
                    raise unreachable(self.base_url, exc) from exc
                time.sleep(backoff(attempt))
                continue
            if response.status_code == 401 and not refreshed and error_code(response) == "token_expired":
                refreshed = True
                self._tokens.drop(token)
                continue
            if attempt < self.retries and should_retry(response, call):
                attempt += 1
                time.sleep(backoff(attempt, response))
                continue
            return response

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, client_id={self.client_id!r})"


__all__ = [
    "DEFAULT_APPROVAL_WAIT_S",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "Call",
    "Client",
    "TokenCache",
    "approval_settled",
]
