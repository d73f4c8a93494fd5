"""The system graph as JSON and Graphviz DOT, from manifest files and from the database."""

from __future__ import annotations

import json
from pathlib import Path

from systems_fixtures import EXAMPLE, bound_manifest
from typer.testing import CliRunner

from interlock._internal.cli.main import _register, app
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.systems.graph import build_graph, to_dot


def _graph(tmp_path: Path) -> dict:  # type: ignore[type-arg]
    manifests = [
        load_manifest(EXAMPLE / "workflow.yaml").manifest,
        load_manifest(bound_manifest(tmp_path, prod=8001, stage=8002)).manifest,
    ]
    return build_graph(manifests)


def test_graph_holds_every_kind_and_edge(tmp_path: Path) -> None:
    graph = _graph(tmp_path)
    ids = {n["id"] for n in graph["nodes"]}
    assert {
        "workflow:support-triage",
        "workflow:ledger",
        "agent:ledger/stage-bot",
        "tool:support-triage/emails.send",
        "system:crm",
        "system:helpdesk",
        "environment:staging",
        "data_class:pii",
    } <= ids
    helpdesk = next(n for n in graph["nodes"] if n["id"] == "system:helpdesk")
    # Both workflows use a system named helpdesk; the first declaration (by workflow name) describes it.
    assert helpdesk["tier"] == 1
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert ("tool:support-triage/customers.get", "system:crm", "acts_on") in edges
    assert ("tool:support-triage/customers.get", "data_class:pii", "returns") in edges
    assert ("system:crm", "data_class:pii", "holds") in edges
    assert ("agent:ledger/stage-bot", "environment:staging", "acts_in") in edges
    bound = [e for e in graph["edges"] if e["kind"] == "bound_in" and e["source"] == "system:archive"]
    assert bound == [
        {
            "source": "system:archive",
            "target": "environment:production",
            "kind": "bound_in",
            "endpoint": "http://127.0.0.1:8001/archive",
            "credential": "env:ARCHIVE_PROD_TOKEN",
        }
    ]
    # Who may do what: the static reading of the rules, with their conditions.
    refunds = [a for a in graph["access"]["payments"]["production"] if a["agent"] == "triage-bot"]
    assert refunds[0]["may"] == [
        {"outcome": "forbidden", "when": "amount > 500", "rule": "refund-hard-limit"},
        {"outcome": "approval", "when": "amount > 50", "rule": "refund-review"},
        {"outcome": "alone", "when": "amount <= 50", "rule": "small-refunds"},
    ]
    # The reporter (read only) is not listed on the email system at all.
    assert {a["agent"] for a in graph["access"]["email"]["production"]} == {"triage-bot"}
    emails = next(n for n in graph["nodes"] if n["id"] == "tool:support-triage/emails.send")
    assert emails["destination"] == "external"
    assert emails["cleared"] == ["public"]


def test_dot_output(tmp_path: Path) -> None:
    dot = to_dot(_graph(tmp_path))
    assert dot.startswith("digraph interlock {")
    assert '"system:crm" [label="crm\\ntier 1" shape=cylinder];' in dot
    assert '"tool:support-triage/customers.get" -> "system:crm" [label="acts_on"];' in dot
    assert dot.rstrip().endswith("}")


def test_graph_command_from_files_and_from_the_database(tmp_path: Path, db_url: str) -> None:
    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["graph", str(EXAMPLE / "workflow.yaml"), "--format", "dot"])
    assert result.exit_code == 0, result.output
    assert '"workflow:support-triage"' in result.output
    from interlock import Interlock, Settings

    il = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    il.migrate()
    il.load_workflow(EXAMPLE / "workflow.yaml")
    il.close()
    result = runner.invoke(app, ["graph", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["problems"] == []
    assert "system:payments" in {n["id"] for n in data["nodes"]}


def test_this_weeks_activity_per_system_and_environment(harness) -> None:  # type: ignore[no-untyped-def]
    from interlock._internal.systems.service import activity, layout

    run = harness.run()
    harness.act(run, "customers.get", {"customer_id": "C-1001"})
    harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    manifests = [harness.runtime.manifest]
    assert activity(harness.il.engine, manifests) == {
        "crm": {"production": {"allow": 1, "deny": 1}},
        "helpdesk": {"production": {"allow": 1}},
    }
    drawing = layout(build_graph(manifests))
    assert {b["id"] for b in drawing["boxes"]} >= {"system:crm", "tool:support-triage/customers.get"}
    assert drawing["lines"]
    assert all(line["d"].startswith("M") for line in drawing["lines"])
