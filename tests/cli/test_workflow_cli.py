"""``interlock workflow validate`` and ``show``, driven through the Typer app itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interlock._internal.cli.workflow import app
from interlock._internal.manifest.loader import load_manifest

runner = CliRunner()


@pytest.fixture
def broken(tmp_path: Path, support_manifest_path: Path) -> tuple[Path, int]:
    """The reference manifest with one bad verb; returns the file and the bad line."""
    text = support_manifest_path.read_text().replace("verb: draft\n", "verb: drafts\n")
    path = tmp_path / "workflow.yaml"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if "verb: drafts" in row)
    return path, line


def test_validate_ok(support_manifest_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(support_manifest_path)])
    assert result.exit_code == 0, result.stderr
    version_id = load_manifest(support_manifest_path).version_id
    assert result.stdout == f"valid: support-triage 1.0.0: 8 tools, 2 agents ({version_id})\n"
    assert result.stderr == ""


def test_validate_ok_json(support_manifest_path: Path) -> None:
    result = runner.invoke(app, ["validate", "--json", str(support_manifest_path)])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    loaded = load_manifest(support_manifest_path)
    assert data == {
        "valid": True,
        "name": "support-triage",
        "version": "1.0.0",
        "tools": 8,
        "agents": 2,
        "version_id": loaded.version_id,
        "sha256": loaded.sha256,
    }


def test_validate_invalid(broken: tuple[Path, int]) -> None:
    path, line = broken
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"{path}:{line}: tools[3].verb: 'drafts' is not a verb; expected one of read,"
    )
    assert result.stderr.count("\n") == 1


def test_validate_invalid_json(broken: tuple[Path, int]) -> None:
    path, line = broken
    result = runner.invoke(app, ["validate", "--json", str(path)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False
    error = data["error"]
    assert (error["file"], error["line"], error["field"], error["code"]) == (
        str(path),
        line,
        "tools[3].verb",
        "manifest_invalid",
    )
    assert error["message"].startswith("'drafts' is not a verb")


def test_error_text_is_not_read_as_markup(tmp_path: Path, support_manifest_path: Path) -> None:
    text = support_manifest_path.read_text().replace("verb: draft\n", "verb: '[bold]x[/bold]'\n")
    path = tmp_path / "w.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "'[bold]x[/bold]' is not a verb" in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, ["validate", str(missing)])
    assert result.exit_code == 2
    assert result.stderr == f"{missing}: file not found\n"
    result = runner.invoke(app, ["validate", "--json", str(missing)])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "manifest_not_found"
    result = runner.invoke(app, ["show", str(missing)])
    assert result.exit_code == 2


def test_show(support_manifest_path: Path) -> None:
    result = runner.invoke(app, ["show", str(support_manifest_path)])
    assert result.exit_code == 0, result.stderr
    out = " ".join(result.stdout.split())  # Rich wraps long lines at the console width
    for expected in (
        "support-triage 1.0.0",
        "Owner: support-ops@example.com",
        "Objective: Triage incoming support tickets",
        "payments.refund",
        "limit > 50 → bulk",
        "Runs without approval:",
        "small-refunds: payments.refund when amount <= 50",
        "Needs approval:",
        "refund-review: payments.refund when amount > 50 — Refunds above 50 need a person.",
        "Forbidden:",
        "no-bulk: verbs update, send, refund, delete with trait bulk",
        "refund-needs-reason: missing_data on payments.refund",
        "Budget per run: 40 steps, 30 tool calls, $2.00, 900 s",
        "May pause: support-lead, oncall",
    ):
        assert expected in out, expected
    assert out.index("Runs without approval:") < out.index("Needs approval:") < out.index("Forbidden:")


def test_show_json(support_manifest_path: Path) -> None:
    result = runner.invoke(app, ["show", "--json", str(support_manifest_path)])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["owner"] == "support-ops@example.com"
    assert data["objective"].startswith("Triage incoming support tickets: read the ticket")
    refund = next(t for t in data["tools"] if t["name"] == "payments.refund")
    assert (refund["verb"], refund["traits"]) == ("refund", ["money"])
    assert [r["id"] for r in data["runs_without_approval"]] == [
        "reads",
        "drafts",
        "ticket-updates",
        "small-refunds",
    ]
    assert [r["id"] for r in data["needs_approval"]] == ["customer-email", "refund-review"]
    assert [r["id"] for r in data["forbidden"]] == ["refund-hard-limit", "no-deletes", "no-bulk"]
    assert data["forbidden"][0]["applies_to"] == "payments.refund when amount > 500"
    assert data["budgets"] == {
        "max_steps": 40,
        "max_tool_calls": 30,
        "max_cost_usd": 2.0,
        "max_duration_s": 900,
        "max_repeats": 3,
    }
    assert data["approvals"]["quorum"] == 1


def test_show_invalid(broken: tuple[Path, int]) -> None:
    path, line = broken
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:{line}: tools[3].verb:")
