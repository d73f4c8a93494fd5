"""The stages after the reservation: execute, check the output, redact.

A :class:`Call` is what an allowed, reserved and journaled action carries from the reservation
to its record; an :class:`Outcome` is what came back. Nothing here writes to the database.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeGuard

import anyio.to_thread

from interlock._internal.gateway.blocking import waiting_outside
from interlock._internal.gateway.decide import Intent, resolve_credential
from interlock._internal.gateway.models import Decision, Run
from interlock._internal.gateway.records import mask_only, safe_redact
from interlock._internal.gateway.runtime import ToolRuntime, WorkflowRuntime
from interlock._internal.gateway.transports.base import AsyncTransport, CallContext, Transport
from interlock._internal.limits.budgets import Scope
from interlock._internal.limits.value_limits import Hold
from interlock._internal.telemetry.redaction import redact
from interlock.exceptions import ConfigError, NotFound, UpstreamError

log = logging.getLogger("interlock.pipeline")


@dataclass(frozen=True)
class Call:
    """One journaled upstream call: the action, what was reserved for it, and its upstream key."""

    run: Run
    agent_id: str
    intent: Intent
    decision: Decision
    tool: ToolRuntime
    runtime: WorkflowRuntime
    step_id: str
    seq: int
    scopes: list[Scope]
    cost_micros: int
    upstream_key: str
    approval_id: str | None = None
    value_holds: tuple[Hold, ...] = ()  # value-limit holds reserved for this step


@dataclass
class Outcome:
    """What the upstream gave back, then (after :func:`redact_outcome`) its stored forms."""

    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0
    secrets: tuple[str, ...] = ()
    stored_result: Any = None
    stored_args: Any = None
    returned_result: Any = None
    cached_from: str | None = None  # answered from the cache: the step that fetched it

    @property
    def cached(self) -> bool:
        return self.cached_from is not None

    @property
    def failed(self) -> bool:
        return self.error is not None


def execute(call: Call) -> Outcome:
    """Call the upstream with the injected credential, the upstream idempotency key and the tool's
    timeout. The circuit breaker of an HTTP upstream is consulted by its transport, at the wire.
    Never raises: an error becomes the outcome's ``error`` (the call is journaled either way)."""
    outcome = Outcome()
    started = time.perf_counter()
    try:
        transport, ctx = _prepare(call, outcome)
        with waiting_outside():  # the upstream's time is not the pipeline's
            outcome.result = transport.call(call.tool.spec, call.intent.arguments, ctx)
    except (UpstreamError, ConfigError, NotFound) as exc:
        outcome.error = exc.message
    except Exception as exc:  # a transport bug must not take the record with it
        log.exception("transport error")
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.duration_ms = (time.perf_counter() - started) * 1000
    return outcome


async def execute_async(call: Call) -> Outcome:
    """:func:`execute` from a coroutine. An asynchronous upstream (an MCP session) is awaited on
    the running loop; any other transport blocks, so it runs in a worker thread. Never raises
    but for the caller's own cancellation."""
    outcome = Outcome()
    started = time.perf_counter()
    try:
        transport, ctx = _prepare(call, outcome)
        if not _is_async(transport):
            return await anyio.to_thread.run_sync(execute, call)
        outcome.result = await transport.call_async(call.tool.spec, call.intent.arguments, ctx)
    except (UpstreamError, ConfigError, NotFound) as exc:
        outcome.error = exc.message
    except Exception as exc:  # a transport bug must not take the record with it
        log.exception("transport error")
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.duration_ms = (time.perf_counter() - started) * 1000
    return outcome


@functools.cache
def _asynchronous(kind: type) -> bool:
    return issubclass(kind, AsyncTransport)


def _is_async(transport: Transport) -> TypeGuard[AsyncTransport]:
    # A runtime protocol's isinstance walks its members each time; the answer is the class's.
    return _asynchronous(type(transport))


def _prepare(call: Call, outcome: Outcome) -> tuple[Transport, CallContext]:
    """The transport and the call's context, with the credential resolved (and noted on
    ``outcome``, so that redaction masks it even when the call fails)."""
    spec = call.tool.spec
    credential = resolve_credential(spec.credential, base_dir=call.runtime.loaded.base_dir)
    outcome.secrets = (credential,) if credential else ()
    ctx = CallContext(
        run_id=call.run.id,
        step_id=call.step_id,
        agent_id=call.agent_id,
        workflow=call.run.workflow,
        idempotency_key=call.upstream_key,
        credential=credential,
        timeout_s=spec.timeout_s,
    )
    return call.runtime.transport_for(spec), ctx


def cached_outcome(call: Call, hit: Any) -> Outcome:
    """The outcome of a read answered from the cache (:mod:`.cache`): its stored form, which is
    already redacted, for the record and for the agent alike."""
    return Outcome(
        result=hit.result,
        stored_result=hit.result,
        stored_args=redact(call.intent.arguments),
        returned_result=hit.result,
        cached_from=hit.step_id or "",
    )


def check_output(call: Call, outcome: Outcome) -> Outcome:
    """A result that fails the tool's output schema is an error, and is not passed on."""
    if outcome.error is None:
        problem = call.tool.output_errors(outcome.result)
        if problem is not None:
            outcome.error = f"output failed the tool's output_schema: {problem}"
            outcome.result = None
    return outcome


def redact_outcome(call: Call, outcome: Outcome) -> Outcome:
    """The stored forms: arguments, result and error redacted (the injected credential too).
    The agent gets the tool's answer as the tool gave it, less the credential."""
    secrets = outcome.secrets
    outcome.stored_result = safe_redact(outcome.result, secrets)
    if outcome.error is not None:
        outcome.error = str(safe_redact(outcome.error, secrets))
    # The arguments passed the schema, so they are JSON: redact without re-checking that.
    outcome.stored_args = redact(call.intent.arguments, extra_secrets=secrets)
    outcome.returned_result = (
        outcome.stored_result  # the tool's `redact_results: true`: the agent sees only the redacted form
        if call.tool.spec.redact_results
        else mask_only(outcome.result, secrets)
    )
    return outcome
