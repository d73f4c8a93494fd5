"""Spans follow the GenAI conventions, payloads appear only redacted, metrics count outcomes."""

from __future__ import annotations

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest

from interlock._internal.telemetry.tracing import Tracing, build_provider


def traced(harness, *, capture: bool) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = build_provider(service_name="test", exporter=exporter)
    harness.il.pipeline.tracing = Tracing(tracer_provider=provider, capture_payloads=capture)
    harness.il.__dict__["tracing"] = harness.il.pipeline.tracing
    return exporter


def test_action_spans_follow_genai_conventions_and_share_the_run_trace(harness) -> None:
    exporter = traced(harness, capture=False)
    run = harness.run()
    ok = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    big = harness.act(
        run, "payments.refund", {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken"}
    )
    harness.il.finish_run(harness.tokens["triage-bot"], run)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    get = spans["execute_tool tickets.get"]
    assert get.attributes["gen_ai.operation.name"] == "execute_tool"
    assert get.attributes["gen_ai.tool.name"] == "tickets.get"
    assert get.attributes["gen_ai.tool.call.id"] == ok.step_id
    assert get.attributes["interlock.decision"] == "allow"
    assert "gen_ai.tool.call.arguments" not in get.attributes
    refund = spans["execute_tool payments.refund"]
    assert refund.attributes["interlock.decision"] == "require_approval"
    assert refund.attributes["interlock.approval_id"] == big.approval_id
    run_span = spans["invoke_agent triage-bot"]
    assert run_span.attributes["gen_ai.operation.name"] == "invoke_agent"
    # Every action is a child of the run span, though it was emitted last.
    assert get.context.trace_id == refund.context.trace_id == run_span.context.trace_id
    assert get.parent.span_id == run_span.context.span_id


def test_payloads_on_spans_are_redacted(harness) -> None:
    exporter = traced(harness, capture=True)
    run = harness.run()
    harness.act(run, "replies.draft", {"ticket_id": "T-1001", "body": "my card is 4111 1111 1111 1111"})
    [span] = [s for s in exporter.get_finished_spans() if s.name == "execute_tool replies.draft"]
    args = span.attributes["gen_ai.tool.call.arguments"]
    assert "4111 1111" not in args
    assert "REDACTED" in args


def test_metrics_count_decisions_spend_and_pending_approvals(harness) -> None:
    run = harness.run()
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    harness.act(
        run, "payments.refund", {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "x"}
    )
    text = generate_latest(harness.il.metrics.registry).decode()
    assert (
        'interlock_actions_total{decision="allow",status="executed",tool="tickets.get",workflow="support-triage"} 1.0'
        in text
    )
    assert 'decision="deny",status="denied",tool="customers.delete"' in text
    assert 'interlock_approvals_pending{workflow="support-triage"} 1.0' in text
    assert "interlock_pipeline_seconds_bucket" in text
