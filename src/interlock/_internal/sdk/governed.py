"""Governed tools: a Python function whose calls go through Interlock instead of running.

    current_run: ContextVar[str] = ContextVar("current_run")

    @governed(client, tool="payments.refund", run=current_run)
    def refund(ticket_id: str, amount: float, currency: str, reason: str) -> dict[str, Any]:
        '''Refund a customer.'''            # the body never runs: Interlock executes the tool

    refund("T-1002", 30, "USD", "late delivery")    # → the refund's result, once executed

The function supplies the tool's arguments (its parameters, bound as Python binds them) and the
type its result is validated into (its return annotation). Interlock decides, executes the tool's
upstream with credentials the agent never holds, and records the step. Outcomes other than
``executed`` raise: :class:`ActionDenied` (denied, escalated, or the approval rejected / expired /
cancelled; ``err.decision`` says why), :class:`ApprovalPending` (``err.approval_id``; call
``refund.wait(err.approval_id)`` later), :class:`ArgumentsInvalid`, :class:`LimitExceeded`,
:class:`UpstreamError`. ``refund.act(...)`` returns the :class:`ActionResult` instead of raising.

The same decorator works over the remote :class:`Client` (sync functions), :class:`AsyncClient`
(``async def`` functions) and the embedded :class:`Interlock` (pass the agent's ``token``).

This module also holds the agent-side adapters the framework integrations share.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from interlock._internal.approvals.models import AgentApprovalView
from interlock._internal.gateway.models import ActionResult, ToolInfo
from interlock._internal.sdk.aclient import AsyncClient
from interlock._internal.sdk.client import DEFAULT_APPROVAL_WAIT_S, Client, approval_settled
from interlock.exceptions import (
    ActionDenied,
    ApprovalPending,
    ArgumentsInvalid,
    InterlockError,
    LimitExceeded,
    NotFound,
    UpstreamError,
)

if TYPE_CHECKING:
    from interlock._internal.service import Interlock

P = ParamSpec("P")
R = TypeVar("R")

RunRef = str | Callable[[], str] | ContextVar[str]
TokenRef = str | Callable[[], str]

_EMBEDDED_POLL_S = 0.2
_MAX_KEY = 200


# ---- the agent's side, whatever Interlock it talks to --------------------------------------------


class SyncAgent(Protocol):
    """What governed tools need from Interlock; :class:`Client` and :class:`EmbeddedAgent` have it."""

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
    ) -> ActionResult: ...

    def wait_for_approval(self, approval_id: str, *, timeout_s: float = ...) -> AgentApprovalView: ...

    def tools(self) -> list[ToolInfo]: ...


class AsyncAgent(Protocol):
    """The async form of :class:`SyncAgent`; :class:`AsyncClient` has it."""

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
    ) -> ActionResult: ...

    async def wait_for_approval(self, approval_id: str, *, timeout_s: float = ...) -> AgentApprovalView: ...

    async def tools(self) -> list[ToolInfo]: ...


class EmbeddedAgent:
    """One agent's view of an embedded :class:`Interlock`, with the :class:`Client`'s method shapes.

    ``token`` is the agent's access token, or a callable returning a current one (tokens expire).
    """

    def __init__(self, interlock: Interlock, *, token: TokenRef) -> None:
        self.interlock = interlock
        self._token = token

    def token(self) -> str:
        return self._token() if callable(self._token) else self._token

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
        return self.interlock.act(
            self.token(),
            run_id,
            tool,
            dict(arguments),
            idempotency_key=idempotency_key,
            reasoning=reasoning,
            confidence=confidence,
            evidence=evidence,
        )

    def wait_for_approval(
        self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S
    ) -> AgentApprovalView:
        from interlock._internal.identity.tokens import authenticate_agent

        il = self.interlock
        principal = authenticate_agent(self.token(), tokens=il.tokens, store=il.agents)
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            view = il.approvals.get(approval_id)
            if view.agent_id != principal.agent_id or view.workflow != principal.workflow:
                raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval")
            agent_view = AgentApprovalView.of(view)
            remaining = deadline - time.monotonic()
            if approval_settled(agent_view) or remaining <= 0:
                return agent_view
            time.sleep(min(_EMBEDDED_POLL_S, remaining))

    def tools(self) -> list[ToolInfo]:
        # The MCP gateway's visibility rule, so every interface lists the same tools.
        from interlock._internal.identity.tokens import authenticate_agent
        from interlock._internal.policy.visibility import visible_tools

        il = self.interlock
        principal = authenticate_agent(self.token(), tokens=il.tokens, store=il.agents)
        runtime = il.runtime(principal.workflow)
        return [
            ToolInfo(
                name=spec.name,
                description=spec.description,
                verb=spec.verb,
                traits=list(spec.traits),
                input_schema=spec.input_schema,
            )
            for spec in visible_tools(runtime, principal.agent_id, environment=principal.environment)
        ]


class ThreadedAgent:
    """A :class:`SyncAgent` behind the :class:`AsyncAgent` interface: each call runs in a thread."""

    def __init__(self, agent: SyncAgent) -> None:
        self.agent = agent

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
        return await asyncio.to_thread(
            functools.partial(
                self.agent.act,
                run_id,
                tool,
                arguments,
                idempotency_key=idempotency_key,
                reasoning=reasoning,
                confidence=confidence,
                evidence=evidence,
            )
        )

    async def wait_for_approval(
        self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S
    ) -> AgentApprovalView:
        return await asyncio.to_thread(
            functools.partial(self.agent.wait_for_approval, approval_id, timeout_s=timeout_s)
        )

    async def tools(self) -> list[ToolInfo]:
        return await asyncio.to_thread(self.agent.tools)


def sync_agent(target: object, *, token: TokenRef | None = None) -> SyncAgent:
    """The sync agent for ``target``: a :class:`Client`, an :class:`EmbeddedAgent`, or an embedded
    :class:`Interlock` with the agent's ``token``."""
    from interlock._internal.service import Interlock

    if isinstance(target, Interlock):
        if token is None:
            raise TypeError("an embedded Interlock needs the agent's access token: pass token=")
        return EmbeddedAgent(target, token=token)
    if token is not None:
        raise TypeError("token= is only for an embedded Interlock; a Client fetches its own tokens")
    if isinstance(target, Client | EmbeddedAgent):
        return target
    if isinstance(target, AsyncClient):
        raise TypeError("an AsyncClient governs async functions; use a Client here")
    raise TypeError(f"expected a Client, AsyncClient or Interlock, not {type(target).__name__}")


def async_agent(target: object, *, token: TokenRef | None = None) -> AsyncAgent:
    """The async agent for ``target``: an :class:`AsyncClient` as is, anything sync in a thread."""
    if isinstance(target, AsyncClient):
        if token is not None:
            raise TypeError("token= is only for an embedded Interlock; a client fetches its own tokens")
        return target
    if isinstance(target, ThreadedAgent):
        return target
    return ThreadedAgent(sync_agent(target, token=token))


# ---- outcomes ------------------------------------------------------------------------------------

_CLOSED = ("rejected", "expired", "cancelled")


def settle(result: ActionResult, approval: AgentApprovalView | None) -> ActionResult:
    """The action's final result when its approval has one (approved and executed or refused)."""
    if result.status == "pending_approval" and approval is not None and approval.outcome is not None:
        return approval.outcome
    return result


def _reasons(result: ActionResult) -> str:
    return "; ".join(r.message for r in result.decision.reasons) or result.status


def _closed(approval: AgentApprovalView | None) -> bool:
    return approval is not None and approval.state in _CLOSED


def outcome_value(result: ActionResult, approval: AgentApprovalView | None = None) -> Any:
    """The executed action's result, or the InterlockError that says why there is none."""
    tool = result.decision.tool or "the action"
    if approval is not None and _closed(approval):
        final = approval.outcome or result
        why = f": {approval.comment}" if approval.comment else ""
        denied = ActionDenied(
            f"{tool} was not approved (approval {approval.id} {approval.state}){why}",
            code=f"approval_{approval.state}",
            details={"approval_id": approval.id, "comment": approval.comment, "run_id": final.run_id},
        )
        denied.result = final
        raise denied
    result = settle(result, approval)
    if result.status == "executed":
        return result.result
    details: dict[str, Any] = {
        "status": result.status,
        "run_id": result.run_id,
        "step_id": result.step_id,
        "reasons": [r.model_dump(mode="json", exclude_none=True) for r in result.decision.reasons],
    }
    if result.status == "pending_approval" and result.approval_id is not None:
        pending = ApprovalPending(
            f"{tool} waits for a person to approve it (approval {result.approval_id}): {_reasons(result)}",
            approval_id=result.approval_id,
            details=details,
        )
        pending.result = result
        raise pending
    if result.status in ("denied", "escalated", "pending_approval"):
        denied = ActionDenied(
            f"{tool} {result.status}: {_reasons(result)}", code=result.status, details=details
        )
        denied.result = result
        raise denied
    if result.status == "invalid":
        field_name = next((r.field for r in result.decision.reasons if r.field), None) or "arguments"
        raise ArgumentsInvalid(f"{tool}: {_reasons(result)}", field=field_name, details=details)
    if result.status == "limited":
        raise LimitExceeded(f"{tool}: {_reasons(result)}", code="limited", retry_after=result.retry_after)
    raise UpstreamError(f"{tool} failed: {result.error or _reasons(result)}", details=details)


def tool_output(result: ActionResult, approval: AgentApprovalView | None = None) -> str:
    """What a model is told about an action's outcome: the result as JSON when it ran, else a short
    sentence it can act on (never a stack trace)."""
    tool = result.decision.tool or "this action"
    if approval is not None and _closed(approval):
        why = f" Reason: {approval.comment}" if approval.comment else ""
        return f"{tool} was not approved (approval {approval.id} {approval.state}); it did not run.{why}"
    result = settle(result, approval)
    if result.status == "executed":
        return json.dumps(result.result, ensure_ascii=False, default=str)
    if result.status == "pending_approval":
        return (
            f"{tool} is waiting for a person to approve it (approval id {result.approval_id}); "
            f"it has not run yet. Do not retry it. Why: {_reasons(result)}"
        )
    if result.status == "limited" and result.retry_after is not None:
        wait = f"{result.retry_after:.0f}s"
        return f"{tool} was refused for now (limited: {_reasons(result)}); retry after {wait}."
    if result.status == "failed":
        return f"{tool} ran and failed: {result.error or _reasons(result)}"
    if result.status == "outcome_unknown":
        return (
            f"{tool} may or may not have happened (its call was cut off); a person is checking. "
            "Do not repeat it."
        )
    return f"{tool} was refused by Interlock ({result.status}): {_reasons(result)}"


def call_key(prefix: str, run_id: str, call_id: str | None) -> str:
    """A deterministic idempotency key for one model tool call, so a framework that replays the call
    (a resumed graph or run) gets the recorded outcome instead of a second action."""
    if not call_id:
        return f"{prefix}-{uuid.uuid4()}"
    return f"{prefix}:{run_id}:{call_id}"[:_MAX_KEY]


def function_name(tool: str) -> str:
    """The model-facing name of an Interlock tool: function names allow only ``[A-Za-z0-9_-]``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", tool)[:64]


def tool_infos(
    client: object, tools: Sequence[str | ToolInfo] | None, *, token: TokenRef | None = None
) -> list[ToolInfo]:
    """The tools to expose: every tool the agent may use, or those named (names are looked up in
    that list; a :class:`ToolInfo` is taken as given, e.g. one described from the manifest)."""
    if tools is not None and all(isinstance(t, ToolInfo) for t in tools):
        return [t for t in tools if isinstance(t, ToolInfo)]
    if isinstance(client, AsyncClient):
        raise TypeError("with an AsyncClient, pass the tools themselves: tools=await client.tools()")
    visible = {info.name: info for info in sync_agent(client, token=token).tools()}
    if tools is None:
        return list(visible.values())
    chosen: list[ToolInfo] = []
    for item in tools:
        if isinstance(item, ToolInfo):
            chosen.append(item)
        elif item in visible:
            chosen.append(visible[item])
        else:
            raise NotFound(
                f"tool {item!r} is not among this agent's tools; pass a ToolInfo to expose it anyway",
                code="unknown_tool",
            )
    return chosen


# ---- the decorator -------------------------------------------------------------------------------


def _run_id(run: RunRef) -> str:
    if isinstance(run, str):
        return run
    if isinstance(run, ContextVar):
        try:
            return run.get()
        except LookupError:
            raise InterlockError(
                f"no run: the context variable {run.name!r} is not set here", code="no_run"
            ) from None
    return run()


class _Signature:
    """Binds a call's Python arguments to the tool's arguments object."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.signature = inspect.signature(fn)
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in self.signature.parameters.values()):
            raise TypeError(f"{fn.__qualname__}: a governed tool's arguments have names; drop *args")
        self._adapter: TypeAdapter[Any] | None = None
        self._adapter_ready = False

    def arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            param = self.signature.parameters[name]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            elif value is None and param.default is None:
                continue  # an optional argument left out: the tool's schema may not take null
            else:
                out[name] = value
        jsonable: dict[str, Any] = to_jsonable_python(out)
        return jsonable

    def convert(self, value: Any) -> Any:
        """The result as the function's return annotation says, when it says something useful."""
        if not self._adapter_ready:
            self._adapter = _return_adapter(self.fn)
            self._adapter_ready = True
        if self._adapter is None:
            return value
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            raise UpstreamError(
                f"{self.fn.__qualname__}: the tool's result does not match the return annotation: {exc}",
                code="unexpected_result",
            ) from exc


def _return_adapter(fn: Callable[..., Any]) -> TypeAdapter[Any] | None:
    try:
        hint = typing.get_type_hints(fn).get("return")
    except (NameError, TypeError):
        return None
    if hint is None or hint is Any or hint is object or hint is type(None):
        return None
    return TypeAdapter(hint)


class _GovernedBase:
    # Copied from the decorated function by functools.update_wrapper.
    __name__: str
    __wrapped__: Callable[..., Any]

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        tool: str,
        run: RunRef,
        reasoning: str | None,
        wait_s: float,
    ) -> None:
        self.tool = tool
        self.run = run
        self.reasoning = reasoning
        self.wait_s = wait_s
        self._sig = _Signature(fn)
        functools.update_wrapper(typing.cast(Any, self), fn)  # name, doc, __wrapped__

    def arguments(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The arguments object a call with these Python arguments sends."""
        return self._sig.arguments(args, kwargs)

    def __repr__(self) -> str:
        return f"<governed {self.tool!r} {self._sig.fn.__qualname__}>"


class Governed(_GovernedBase, Generic[P, R]):
    """A governed function (sync). Calling it submits the action; see the module docs."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        agent: SyncAgent,
        tool: str,
        run: RunRef,
        reasoning: str | None = None,
        wait_s: float = 0.0,
    ) -> None:
        super().__init__(fn, tool=tool, run=run, reasoning=reasoning, wait_s=wait_s)
        self.agent = agent

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result = self.act(*args, **kwargs)
        approval = None
        if result.status == "pending_approval" and result.approval_id is not None and self.wait_s > 0:
            approval = self.agent.wait_for_approval(result.approval_id, timeout_s=self.wait_s)
        value: R = self._sig.convert(outcome_value(result, approval))
        return value

    def act(self, *args: P.args, **kwargs: P.kwargs) -> ActionResult:
        """Submit the action and return its :class:`ActionResult` whatever the decision."""
        return self.agent.act(
            _run_id(self.run), self.tool, self._sig.arguments(args, kwargs), reasoning=self.reasoning
        )

    def wait(self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S) -> R:
        """Wait for an approval this tool raised :class:`ApprovalPending` for; return the result once
        approved and executed, or raise as a call would (still pending → ApprovalPending again)."""
        approval = self.agent.wait_for_approval(approval_id, timeout_s=timeout_s)
        value: R = self._sig.convert(outcome_value(_pending(approval, self.tool), approval))
        return value


class AsyncGoverned(_GovernedBase, Generic[P, R]):
    """A governed ``async def`` function over an :class:`AsyncClient`."""

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        *,
        agent: AsyncAgent,
        tool: str,
        run: RunRef,
        reasoning: str | None = None,
        wait_s: float = 0.0,
    ) -> None:
        super().__init__(fn, tool=tool, run=run, reasoning=reasoning, wait_s=wait_s)
        self.agent = agent

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result = await self.act(*args, **kwargs)
        approval = None
        if result.status == "pending_approval" and result.approval_id is not None and self.wait_s > 0:
            approval = await self.agent.wait_for_approval(result.approval_id, timeout_s=self.wait_s)
        value: R = self._sig.convert(outcome_value(result, approval))
        return value

    async def act(self, *args: P.args, **kwargs: P.kwargs) -> ActionResult:
        """Submit the action and return its :class:`ActionResult` whatever the decision."""
        return await self.agent.act(
            _run_id(self.run), self.tool, self._sig.arguments(args, kwargs), reasoning=self.reasoning
        )

    async def wait(self, approval_id: str, *, timeout_s: float = DEFAULT_APPROVAL_WAIT_S) -> R:
        """See :meth:`Governed.wait`."""
        approval = await self.agent.wait_for_approval(approval_id, timeout_s=timeout_s)
        value: R = self._sig.convert(outcome_value(_pending(approval, self.tool), approval))
        return value


def _pending(approval: AgentApprovalView, tool: str) -> ActionResult:
    """A stand-in for the pending result when only the approval is known."""
    from interlock._internal.gateway.models import Decision, Reason

    reason = Reason(code="approval_pending", message=f"approval {approval.id} is {approval.state}")
    decision = Decision(decision="require_approval", reasons=[reason], tool=tool)
    return ActionResult(
        status="pending_approval", decision=decision, run_id=approval.run_id, approval_id=approval.id
    )


@overload
def governed(
    target: AsyncClient,
    *,
    tool: str | None = None,
    run: RunRef,
    reasoning: str | None = None,
    wait_s: float = 0.0,
) -> Callable[[Callable[P, Awaitable[R]]], AsyncGoverned[P, R]]: ...


@overload
def governed(
    target: Client | Interlock | EmbeddedAgent,
    *,
    tool: str | None = None,
    run: RunRef,
    token: TokenRef | None = None,
    reasoning: str | None = None,
    wait_s: float = 0.0,
) -> Callable[[Callable[P, R]], Governed[P, R]]: ...


def governed(
    target: Client | AsyncClient | Interlock | EmbeddedAgent,
    *,
    tool: str | None = None,
    run: RunRef,
    token: TokenRef | None = None,
    reasoning: str | None = None,
    wait_s: float = 0.0,
) -> Callable[[Callable[P, Any]], Governed[P, Any] | AsyncGoverned[P, Any]]:
    """Turn a function into a governed tool: each call is an action submitted through Interlock.

    ``target`` is a :class:`Client` (sync functions), an :class:`AsyncClient` (``async def``
    functions) or an embedded :class:`Interlock` (pass the agent's access ``token``, or a callable
    returning a current one). ``tool`` is the manifest's tool name (default: the function's name).
    ``run`` is the run id, a callable returning it, or a :class:`~contextvars.ContextVar` holding
    it, read at each call. ``reasoning`` is sent with every call for approvers to read. With
    ``wait_s`` a call that needs approval waits that long for the decision before raising
    :class:`ApprovalPending`.

    The function's body never runs; see the module docs for arguments, results and errors.
    """

    def wrap(fn: Callable[P, Any]) -> Governed[P, Any] | AsyncGoverned[P, Any]:
        name = tool if tool is not None else fn.__name__
        is_async = inspect.iscoroutinefunction(fn)
        if isinstance(target, AsyncClient):
            if not is_async:
                raise TypeError(f"{fn.__qualname__}: an AsyncClient governs 'async def' functions")
            return AsyncGoverned(
                fn,
                agent=async_agent(target, token=token),
                tool=name,
                run=run,
                reasoning=reasoning,
                wait_s=wait_s,
            )
        if is_async:
            raise TypeError(f"{fn.__qualname__}: an 'async def' function needs an AsyncClient")
        return Governed(
            fn, agent=sync_agent(target, token=token), tool=name, run=run, reasoning=reasoning, wait_s=wait_s
        )

    return wrap


__all__ = [
    "AsyncAgent",
    "AsyncGoverned",
    "EmbeddedAgent",
    "Governed",
    "SyncAgent",
    "ThreadedAgent",
    "async_agent",
    "call_key",
    "function_name",
    "governed",
    "outcome_value",
    "settle",
    "sync_agent",
    "tool_infos",
    "tool_output",
]
