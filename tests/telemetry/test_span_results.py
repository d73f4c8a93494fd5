"""Results on spans are redacted exactly as stored results are; a tool may also hide them from the agent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from interlock import Interlock, Settings
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.store import tables as t
from interlock._internal.telemetry.tracing import Tracing, build_provider

CARD, EMAIL, KEY = "4111 1111 1111 1111", "maria.okafor@example.com", "sk_live_0123456789abcdefghij"

MANIFEST = """
name: leaky
version: "1"
owner: ops@example.com
objective: Look customers up.
success_metric: {name: lookups}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [reader]}
roles:
  reader: {verbs: [read]}
tools:
  - name: customer.lookup
    verb: read
    input_schema: {type: object, properties: {id: {type: string}}, required: [id]}
    upstream: {kind: python, callable: "leaky_tools:lookup"}
  - name: customer.lookup_redacted
    verb: read
    redact_results: true
    input_schema: {type: object, properties: {id: {type: string}}, required: [id]}
    upstream: {kind: python, callable: "leaky_tools:lookup"}
rules:
  allow:
    - {id: reads, verb: read}
"""

TOOLS = f"""
def lookup(id):
    return {{"id": id, "card": "{CARD}", "email": "{EMAIL}", "note": "key {KEY}", "api_key": "abc"}}
"""


@pytest.fixture
def leaky(db_url: str, tmp_path: Path) -> Iterator[tuple[Interlock, str, InMemorySpanExporter]]:
    (tmp_path / "leaky_tools.py").write_text(TOOLS)
    (tmp_path / "leaky.yaml").write_text(MANIFEST)
    il = Interlock(Settings(database={"url": db_url}, telemetry={"capture_payloads": True}))  # type: ignore[arg-type]
    il.migrate()
    exporter = InMemorySpanExporter()
    il.pipeline.tracing = Tracing(
        tracer_provider=build_provider(service_name="test", exporter=exporter), capture_payloads=True
    )
    il.__dict__["tracing"] = il.pipeline.tracing
    il.load_workflow(load_manifest_text(MANIFEST, file=str(tmp_path / "leaky.yaml"), base_dir=tmp_path))
    creds = il.agents.create("bot", workflow="leaky", environment="production", actor="test")
    token = il.issue_token(creds.client_id, creds.client_secret).token
    try:
        yield il, token, exporter
    finally:
        il.close()


def test_span_results_are_redacted_like_stored_results(
    leaky: tuple[Interlock, str, InMemorySpanExporter],
) -> None:
    il, token, exporter = leaky
    run = il.start_run(token).id
    result = il.act(token, run, "customer.lookup", {"id": "C-1"})
    assert result.status == "executed"
    # The agent gets the tool's answer as the tool gave it (workflows need the address to reply to).
    assert result.result["email"] == EMAIL
    [span] = [s for s in exporter.get_finished_spans() if s.name == "execute_tool customer.lookup"]
    on_span = span.attributes["gen_ai.tool.call.result"]
    for clear in (CARD, EMAIL, KEY, '"abc"'):
        assert clear not in on_span
    with il.engine.connect() as conn:
        stored = conn.execute(select(t.steps.c.result).where(t.steps.c.id == result.step_id)).scalar()
    assert json.loads(on_span) == stored


def test_a_tool_can_redact_results_before_the_agent_sees_them(
    leaky: tuple[Interlock, str, InMemorySpanExporter],
) -> None:
    il, token, _exporter = leaky
    run = il.start_run(token).id
    result = il.act(token, run, "customer.lookup_redacted", {"id": "C-1"})
    assert result.status == "executed"
    seen = json.dumps(result.result)
    for clear in (CARD, EMAIL, KEY):
        assert clear not in seen
    assert result.result["id"] == "C-1"
