"""Commands that would otherwise succeed silently on the wrong thing: a database that does not exist,
an agent the manifest does not declare, a manifest whose references do not resolve, a report on a
workflow nobody ran, a misspelt setting, a busy port."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.cli import main

runner = CliRunner()
main._register()


def cli(*args: str) -> Any:
    return runner.invoke(main.app, list(args))


def error_of(result: Any) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


# ---- which database -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["approvals", "list"],
        ["audit", "verify"],
        ["agents", "list"],
        ["handoffs", "list"],
        ["pauses"],
        ["report", "weekly", "support-triage"],
    ],
)
def test_reading_commands_name_the_database_and_never_create_one(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli(*command, "--json")
    assert result.exit_code == 1, result.output
    assert error_of(result)["code"] == "database_not_found"
    assert f"database: sqlite:///{tmp_path / 'interlock.db'}" in result.stderr
    assert "no Interlock database at" in error_of(result)["message"]
    assert not (tmp_path / "interlock.db").exists()


def test_an_existing_database_is_named_and_used(sqlite_url: str) -> None:
    Harness(sqlite_url).close()
    result = cli("audit", "verify", "--db", sqlite_url)
    assert result.exit_code == 0, result.output
    assert f"database: {sqlite_url}" in result.stderr
    assert "audit chain OK" in result.stdout


def test_the_first_operator_may_create_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = cli("operators", "create", "ana", "--role", "admin", "--db", url, "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new.db").is_file()


# ---- agents against the manifest ----------------------------------------------------------------


@pytest.fixture
def loaded(sqlite_url: str) -> str:
    """A database a server has loaded the reference workflow on, with no agents yet."""
    from interlock import Interlock, Settings

    with Interlock(Settings(database={"url": sqlite_url})) as il:  # type: ignore[arg-type]
        il.migrate()
        il.load_workflow(SUPPORT_TRIAGE)
    return sqlite_url


@pytest.mark.parametrize(
    ("workflow", "agent", "env", "says"),
    [
        ("support-triag", "triage-bot", "production", "did you mean 'support-triage'?"),
        ("support-triage", "triage-bott", "production", "did you mean 'triage-bot'?"),
        ("support-triage", "triage-bot", "staging", "gives agent 'triage-bot' the environment 'production'"),
    ],
)
def test_agents_create_is_checked_against_the_manifest(
    loaded: str, workflow: str, agent: str, env: str, says: str
) -> None:
    result = cli("agents", "create", agent, "-w", workflow, "-e", env, "--db", loaded, "--json")
    assert result.exit_code == 1, result.output
    error = error_of(result)
    assert error["code"] == "not_in_manifest"
    assert says in error["message"]
    assert "--force" in error["message"]


def test_force_creates_an_undeclared_agent_with_a_warning(loaded: str) -> None:
    result = cli("agents", "create", "extra-bot", "-w", "support-triage", "-e", "production", "--db", loaded)
    assert result.exit_code == 1
    forced = cli(
        "agents", "create", "extra-bot", "-w", "support-triage", "-e", "production", "--force", "--db", loaded
    )
    assert forced.exit_code == 0, forced.output
    assert "warning:" in forced.stderr
    assert "does not declare an agent 'extra-bot'" in forced.stderr
    assert "client_secret:" in forced.stdout


def test_a_declared_agent_is_created_without_force(loaded: str) -> None:
    result = cli("agents", "create", "triage-bot", "-w", "support-triage", "-e", "production", "--db", loaded)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


# ---- manifests whose references do not resolve --------------------------------------------------


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "wf"
    shutil.copytree(SUPPORT_TRIAGE.parent, folder)
    return folder / "workflow.yaml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_validate_imports_every_callable(workflow_copy: Path) -> None:
    _edit(workflow_copy, "support_desk:get_ticket", "support_desk:get_tickett")
    result = cli("workflow", "validate", str(workflow_copy))
    assert result.exit_code == 1
    line = next(
        n for n, text in enumerate(workflow_copy.read_text().splitlines(), 1) if "get_tickett" in text
    )
    assert f"{workflow_copy}:{line}: tools[1].upstream.callable:" in result.stderr
    assert "no attribute 'get_tickett'" in result.stderr


def test_validate_finds_missing_files_and_mcp_commands(workflow_copy: Path) -> None:
    (workflow_copy.parent / "golden.yaml").unlink()
    result = cli("workflow", "validate", str(workflow_copy), "--json")
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert [(e["field"], e["code"]) for e in errors] == [("evaluation.golden_set", "reference_missing")]
    git_ops = Path(SUPPORT_TRIAGE).parent.parent / "git-ops" / "workflow.yaml"
    copy = workflow_copy.parent / "git.yaml"
    text = git_ops.read_text(encoding="utf-8")
    assert "command:" in text
    copy.write_text(text.replace("command: [", "command: [interlock-no-such-server, ", 1), encoding="utf-8")
    result = cli("workflow", "validate", str(copy), "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["errors"][0]
    assert error["field"].startswith("mcp_servers[0].command")
    assert "'interlock-no-such-server' not found on PATH" in error["message"]


def test_serve_refuses_a_manifest_whose_callable_does_not_import(
    workflow_copy: Path, sqlite_url: str
) -> None:
    _edit(workflow_copy, "support_desk:get_ticket", "support_desk:get_tickett")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli("serve", "-m", str(workflow_copy), "--db", sqlite_url, "--port", str(port))
    assert result.exit_code == 1
    assert "no attribute 'get_tickett'" in result.stderr
    assert "sign in" not in result.output


# ---- reports ------------------------------------------------------------------------------------


def test_a_report_on_an_unknown_workflow_is_refused(loaded: str, tmp_path: Path) -> None:
    result = cli("report", "weekly", "support-triag", "--db", loaded, "--out", str(tmp_path), "--json")
    assert result.exit_code == 1
    error = error_of(result)
    assert error["code"] == "unknown_workflow"
    assert "did you mean 'support-triage'?" in error["message"]
    assert not list(tmp_path.glob("weekly-*"))


def test_a_quiet_week_gets_no_recommendation(loaded: str, tmp_path: Path) -> None:
    result = cli("report", "weekly", "support-triage", "--db", loaded, "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)["recommendation"]
    assert rec["action"] == "not_enough_data"
    assert rec["min_runs"] == 10


# ---- settings -----------------------------------------------------------------------------------


def test_a_misspelt_setting_names_file_line_key_and_the_nearest_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "interlock.toml").write_text(
        '[database]\nurl = "sqlite:///x.db"\n\n[server]\nprot = 8001\n', encoding="utf-8"
    )
    result = cli("approvals", "list")
    assert result.exit_code == 2
    assert "interlock.toml:5: server.prot: unknown setting; did you mean server.port?" in result.stderr
    assert "pydantic" not in result.stderr
    (tmp_path / "interlock.toml").write_text('[server]\nport = "eighty"\n', encoding="utf-8")
    result = cli("approvals", "list")
    assert result.exit_code == 2
    assert "interlock.toml:2: server.port:" in result.stderr
    assert "'eighty'" in result.stderr
    (tmp_path / "interlock.toml").unlink()
    monkeypatch.setenv("INTERLOCK_DATABASE__URLL", "sqlite:///y.db")
    result = cli("approvals", "list")
    assert result.exit_code == 2
    assert (
        "environment INTERLOCK_DATABASE__URLL: database.urll: unknown setting; did you mean database.url?"
        in (result.stderr)
    )


# ---- serve ----------------------------------------------------------------------------------------


def test_serve_checks_its_port_before_anything_else(sqlite_url: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("serve", "-m", str(SUPPORT_TRIAGE), "--db", sqlite_url, "--port", str(port), "--json")
    assert result.exit_code == 1, result.output
    assert error_of(result)["code"] == "port_in_use"
    assert "pick another with --port" in error_of(result)["message"]
    assert "ui_sign_in" not in result.stdout
    assert not (tmp_path / "interlock.db").exists()  # nothing migrated, nothing created


# ---- sign-in links in the database ----------------------------------------------------------------


def test_signin_link_from_the_cli_works_on_a_running_server_once(db_url: str) -> None:
    from interlock._internal.server import create_app

    harness = Harness(db_url)
    harness.il.operators.create("ana", roles=["approver"], workflows=None, actor="test")
    try:
        with TestClient(create_app(interlock=harness.il), follow_redirects=False) as client:
            result = cli("operators", "signin-link", "ana", "--db", db_url, "--url", "http://testserver/ui")
            assert result.exit_code == 0, result.output
            link = result.stdout.strip().splitlines()[0]
            assert link.startswith("http://testserver/ui/login?token=")
            path = link.removeprefix("http://testserver")
            first = client.get(path)
            assert first.status_code == 303
            assert client.get("/ui/approvals").status_code == 200
            assert client.get(path).status_code == 400  # once
    finally:
        harness.close()
    unknown = cli("operators", "signin-link", "nobody", "--db", db_url, "--json")
    assert unknown.exit_code == 1


def test_agents_create_against_a_manifest_file_may_create_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    base = ("agents", "create", "triage-bot", "-w", "support-triage", "--db", url, "-m", str(SUPPORT_TRIAGE))
    wrong = cli(*base, "-e", "staging", "--json")
    assert wrong.exit_code == 1
    assert error_of(wrong)["code"] == "not_in_manifest"
    result = cli(*base, "-e", "production", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new.db").is_file()
