"""OpenTelemetry spans for runs and actions, following the GenAI semantic conventions.

Every action of a run lands in one trace: the trace id and the run span id are derived from the
run id, so replicas that never share memory still put a run's actions under the same parent.
Payloads appear on spans only when ``telemetry.capture_payloads`` is on, and only redacted.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from interlock._internal.gateway.models import ActionResult, Run
from interlock._internal.telemetry.redaction import redact

INSTRUMENTATION = "interlock"


def _ids(run_id: str) -> tuple[int, int]:
    digest = hashlib.sha256(run_id.encode()).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


_FORCED: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "interlock_ids", default=None
)


class RunIdGenerator(IdGenerator):
    """Random ids, except for a run's own span, whose ids are derived from the run id."""

    def generate_span_id(self) -> int:
        forced = _FORCED.get()
        return forced[1] if forced else random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        forced = _FORCED.get()
        return forced[0] if forced else random.getrandbits(128) or 1


def build_provider(
    *, service_name: str, otlp_endpoint: str | None = None, exporter: SpanExporter | None = None
) -> TracerProvider:
    """Interlock's own provider: OTLP over HTTP when configured; any exporter for tests."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), id_generator=RunIdGenerator()
    )
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@lru_cache(maxsize=4096)
def run_context(run_id: str) -> Any:
    """A context whose parent is the run's span, wherever and whenever the action happens.
    (Immutable, so one per run is kept for the run's next actions.)"""
    trace_id, span_id = _ids(run_id)
    parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


class Tracing:
    def __init__(
        self, *, tracer_provider: trace.TracerProvider | None = None, capture_payloads: bool = False
    ):
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(INSTRUMENTATION)
        self.capture_payloads = capture_payloads
        # Without a provider of its own, the tracer follows the global one, which records nothing
        # until an application sets one.
        self._follows_global = tracer_provider is None

    @contextmanager
    def action(self, run: Run, tool: str) -> Iterator[trace.Span]:
        parent = run_context(run.id)
        if self._follows_global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            # No provider is set: OpenTelemetry's no-op tracer would make the run's non-recording
            # span current and end it, a no-op. The same, without building the span's attributes.
            span = trace.get_current_span(parent)
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                yield span
            finally:
                otel_context.detach(token)
            return
        with self.tracer.start_as_current_span(
            f"execute_tool {tool}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": tool,
                "gen_ai.tool.type": "function",
                "gen_ai.agent.id": run.agent_id,
                "gen_ai.agent.name": run.agent_id,
                "interlock.run_id": run.id,
                "interlock.workflow": run.workflow,
                "interlock.environment": run.environment,
            },
        ) as span:
            yield span

    def finish_action(self, span: trace.Span, result: ActionResult, *, arguments: Any = None) -> None:
        if not span.is_recording():
            return
        decision = result.decision
        attrs: dict[str, Any] = {
            "interlock.decision": decision.decision,
            "interlock.status": result.status,
            "interlock.reasons": [r.code for r in decision.reasons],
            "interlock.policy_ids": list(decision.policy_ids),
            "interlock.risk": list(decision.risk),
            "interlock.manifest_version": decision.manifest_version or "",
            "interlock.policy_version": decision.policy_version or "",
        }
        if decision.verb:
            attrs["interlock.verb"] = decision.verb
        if decision.args_hash:
            attrs["interlock.args_hash"] = decision.args_hash
        if result.step_id:
            attrs["gen_ai.tool.call.id"] = result.step_id
        if result.approval_id:
            attrs["interlock.approval_id"] = result.approval_id
        if decision.confidence is not None:
            attrs["interlock.confidence"] = decision.confidence
        if self.capture_payloads:
            # Arguments come redacted from the pipeline. The result is what the agent got: the
            # tool's answer less the injected credential, so it is redacted here with the same
            # patterns as the stored result (traces often leave the company).
            attrs["gen_ai.tool.call.arguments"] = json.dumps(arguments, sort_keys=True, default=str)[:4096]
            if result.result is not None:
                attrs["gen_ai.tool.call.result"] = json.dumps(
                    redact(result.result), sort_keys=True, default=str
                )[:4096]
        span.set_attributes(attrs)
        if result.status in ("failed",):
            span.set_status(Status(StatusCode.ERROR, result.error or "failed"))
        elif result.status in ("denied", "invalid", "limited", "escalated"):
            span.set_status(Status(StatusCode.UNSET))

    def model_call(
        self, run: Run, *, model: str, input_tokens: int, output_tokens: int, cost_usd: float
    ) -> None:
        with self.tracer.start_as_current_span(
            f"chat {model}",
            context=run_context(run.id),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.agent.id": run.agent_id,
                "interlock.run_id": run.id,
                "interlock.workflow": run.workflow,
                "interlock.cost_usd": cost_usd,
            },
        ):
            pass

    def run_span(self, run: Run) -> None:
        """Emit the run's ``invoke_agent`` span once the run has ended. Its ids are derived from
        the run id, so the actions recorded earlier, by any replica, are already its children."""
        if run.ended_at is None:
            return
        ids = _ids(run.id)
        token = _FORCED.set(ids)
        try:
            span = self.tracer.start_span(
                f"invoke_agent {run.agent_id}",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                start_time=int(run.started_at * 1e9),
                kind=SpanKind.INTERNAL,
                attributes={
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.id": run.agent_id,
                    "gen_ai.agent.name": run.agent_id,
                    "interlock.run_id": run.id,
                    "interlock.workflow": run.workflow,
                    "interlock.run_state": run.state,
                    "interlock.steps": run.steps,
                    "interlock.tool_calls": run.tool_calls,
                    "interlock.cost_usd": run.cost_usd,
                },
            )
        finally:
            _FORCED.reset(token)
        span.end(end_time=int(run.ended_at * 1e9))
