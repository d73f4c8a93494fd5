"""The async twin of :class:`~interlock._internal.sdk.client.Client`: same methods, awaited.

Requests, parsing, retries and error mapping are shared with the sync client; only sending differs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx

from interlock._internal.approvals.models import AgentApprovalView
from interlock._internal.gateway.models import ActionResult, ModelCallResult, Run, RunView, ToolInfo
from interlock._internal.sdk.client import (
    DEFAULT_APPROVAL_WAIT_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    MAX_POLL_S,
    Call,
    TokenCache,
    action_call,
    approval_call,
    approval_settled,
    backoff,
    error_code,
    finish_body,
    model_call_body,
    parse_action,
    parse_model,
    parse_token,
    parse_tools,
    path_id,
    retryable,
    should_retry,
    token_form,
    unreachable,
    user_agent,
)


class AsyncClient:
    """An agent's connection to a remote Interlock server, for asyncio code.

    The same arguments and methods as :class:`Client`; every method is a coroutine. ``transport``
    is passed to :class:`httpx.AsyncClient`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self.timeout = timeout
        self.retries = retries
        self._tokens = TokenCache()
        self._token_lock: asyncio.Lock | None = None
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": user_agent()},
        )

    async def start_run(self, trigger: Any = None, *, package: str | None = None) -> Run:
        """Start one run of the agent's workflow; every action then names it. With ``package`` (a
        signed work package) the run is also bound by the package."""
        body: dict[str, Any] = {"trigger": trigger}
        if package is not None:
            body["package"] = package
        run: Run = parse_model(await self.send(Call("POST", "/v1/runs", json=body)), Run)
        return run

    async def act(
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
        """Submit one action; see :meth:`Client.act`."""
        call = action_call(
            run_id,
            tool,
            arguments,
            idempotency_key=idempotency_key,
            reasoning=reasoning,
            confidence=confidence,
            evidence=evidence,
        )
        return parse_action(await self.send(call))

    async def get_run(self, run_id: str) -> RunView:
        """The run and its ordered steps."""
        response = await self.send(Call("GET", f"/v1/runs/{path_id(run_id)}", retry="any"))
        view: RunView = parse_model(response, RunView)
        return view

    async def finish_run(self, run_id: str, *, state: str = "completed", reason: str | None = None) -> Run:
        """End the run as ``completed`` or ``failed``."""
        call = Call("POST", f"/v1/runs/{path_id(run_id)}/finish", json=finish_body(state, reason))
        run: Run = parse_model(await self.send(call), Run)
        return run

    async def report_model_call(
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
        result: ModelCallResult = parse_model(await self.send(call), ModelCallResult)
        return result

    async def wait_for_approval(
        self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S
    ) -> AgentApprovalView:
        """Long-poll an approval until it is settled or ``timeout_s`` passes; see
        :meth:`Client.wait_for_approval`."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            wait = min(MAX_POLL_S, max(0.0, deadline - time.monotonic()))
            response = await self.send(approval_call(approval_id, wait, timeout=self.timeout))
            view: AgentApprovalView = parse_model(response, AgentApprovalView)
            if approval_settled(view) or time.monotonic() >= deadline:
                return view

    async def tools(self) -> list[ToolInfo]:
        """The tools this agent may use, with their input schemas."""
        return parse_tools(await self.send(Call("GET", "/v1/tools", retry="any")))

    # ---- plumbing --------------------------------------------------------------------------------

    async def access_token(self) -> str:
        """A valid access token, fetched or renewed when needed."""
        token = self._tokens.current()
        if token is not None:
            return token
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        async with self._token_lock:
            token = self._tokens.current()
            if token is None:
                token = await self._fetch_token()
        return token

    async def _fetch_token(self) -> str:
        form = token_form(self.client_id, self._secret)
        call = Call("POST", "/oauth/token", retry="any")
        attempt = 0
        while True:
            try:
                response = await self._http.post("/oauth/token", data=form)
            except httpx.HTTPError as exc:
                attempt += 1
                if attempt > self.retries or not retryable(exc, call):
                    raise unreachable(self.base_url, exc) from exc
                await asyncio.sleep(backoff(attempt))
                continue
            token, expires_in = parse_token(response)
            self._tokens.store(token, expires_in)
            return token

    async def send(self, call: Call) -> httpx.Response:
        """Send an authenticated request with the retries ``call`` allows; return the response."""
        attempt = 0
        refreshed = False
        while True:
            token = await self.access_token()
            try:
                response = await self._http.request(
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
                await asyncio.sleep(backoff(attempt))
                continue
            if response.status_code == 401 and not refreshed and error_code(response) == "token_expired":
                refreshed = True
                self._tokens.drop(token)
                continue
            if attempt < self.retries and should_retry(response, call):
                attempt += 1
                await asyncio.sleep(backoff(attempt, response))
                continue
            return response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r}, client_id={self.client_id!r})"


__all__ = ["AsyncClient"]
