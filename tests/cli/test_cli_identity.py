"""``interlock agents``, ``interlock operators`` and ``interlock serve`` through the real command."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import SUPPORT_TRIAGE
from interlock import Interlock, Settings
from interlock._internal.cli import main
from servers import free_port

runner = CliRunner()
WF = "support-triage"
PROD = ("--workflow", WF, "--env", "production")


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    main._register()


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No interlock.toml or INTERLOCK_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in (
        "INTERLOCK_IDENTITY__SIGNING_SEED",
        "INTERLOCK_AUDIT__SIGNING_SEED",
        "INTERLOCK_PACKAGES__SIGNING_SEED",
        "INTERLOCK_MANIFESTS",
    ):
        monkeypatch.delenv(name, raising=False)


def cli(*args: str) -> Any:
    return runner.invoke(main.app, list(args))


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def loaded(url: str) -> str:
    """The database after a server loaded the reference workflow: agents are checked against it."""
    with Interlock(Settings(database={"url": url})) as il:  # type: ignore[arg-type]
        il.migrate()
        il.load_workflow(SUPPORT_TRIAGE)
    return url


def test_agents_create_list_revoke(db_url: str) -> None:
    loaded(db_url)
    created = cli_json(
        "agents", "create", "triage-bot", "--workflow", WF, "--env", "production", "--db", db_url
    )
    assert created["client_id"] == "triage-bot"
    assert created["client_secret"].startswith("ilsk_")
    assert created["status"] == "active"

    with Interlock(Settings(database={"url": db_url})) as il:  # type: ignore[arg-type]
        token = il.issue_token("triage-bot", created["client_secret"])
        assert token.workflow == WF

    listed = cli_json("agents", "list", "--db", db_url)
    assert [(a["id"], a["status"]) for a in listed] == [("triage-bot", "active")]
    assert "secret" not in json.dumps(listed)

    revoked = cli_json("agents", "revoke", "triage-bot", "--reason", "rotated out", "--db", db_url)
    assert revoked["status"] == "revoked"
    assert revoked["revoked_by"].startswith("cli")
    assert cli_json("agents", "list", "--workflow", "billing", "--db", db_url) == []


def test_agents_human_output_shows_the_secret_once(sqlite_url: str) -> None:
    loaded(sqlite_url)
    result = cli(
        "agents", "create", "reporter", "--force", "--workflow", WF, "--env", "production", "--db", sqlite_url
    )
    assert result.exit_code == 0, result.stderr
    secret_lines = [line for line in result.stdout.splitlines() if line.startswith("client_secret:")]
    assert len(secret_lines) == 1
    assert secret_lines[0].split()[1].startswith("ilsk_")
    listing = cli("agents", "list", "--db", sqlite_url)
    assert listing.exit_code == 0
    assert "reporter" in listing.stdout
    assert "ilsk_" not in listing.stdout


def test_agent_errors_are_reported(sqlite_url: str) -> None:
    loaded(sqlite_url)
    cli_json("agents", "create", "triage-bot", "--workflow", WF, "--env", "production", "--db", sqlite_url)
    again = cli(
        "agents",
        "create",
        "triage-bot",
        "--workflow",
        WF,
        "--env",
        "production",
        "--db",
        sqlite_url,
        "--json",
    )
    assert again.exit_code == 1
    assert json.loads(again.stdout)["error"]["code"] == "conflict"
    bad = cli(
        "agents", "create", "no way", "--workflow", WF, "--env", "production", "--force", "--db", sqlite_url
    )
    assert bad.exit_code == 1
    assert "agent_id" in bad.stderr
    missing = cli("agents", "revoke", "ghost", "--db", sqlite_url, "--json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"


def test_operators_create_and_list(db_url: str) -> None:
    made = cli_json(
        "operators",
        "create",
        "olga",
        "--role",
        "owner",
        "--role",
        "approver",
        "--workflow",
        WF,
        "--db",
        db_url,
    )
    assert made["roles"] == ["approver", "owner"]
    assert made["workflows"] == [WF]
    assert made["token"].startswith("ilop_")
    admin = cli_json("operators", "create", "root", "--role", "admin", "--db", db_url)
    assert admin["workflows"] is None

    with Interlock(Settings(database={"url": db_url})) as il:  # type: ignore[arg-type]
        who = il.operators.authenticate(made["token"])
        assert who.can("owner", WF)
        assert not who.can("admin", WF)

    listed = cli_json("operators", "list", "--db", db_url)
    assert [o["id"] for o in listed] == ["olga", "root"]
    assert "ilop_" not in json.dumps(listed)
    human = cli("operators", "list", "--db", db_url)
    assert "olga" in human.stdout

    disabled = cli_json("operators", "disable", "olga", "--db", db_url)
    assert disabled["status"] == "disabled"


def test_operator_with_unknown_role_is_refused(sqlite_url: str) -> None:
    result = cli("operators", "create", "eve", "--role", "superuser", "--db", sqlite_url, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "invalid_arguments"


# ---- serve -------------------------------------------------------------------------------------------


@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Records what `serve` would serve, and on which bound socket, instead of serving it."""
    from interlock._internal import server

    seen: dict[str, Any] = {}

    def serve_one(app: Any, sock: socket.socket, *, log_level: str) -> bool:
        seen["app"] = app
        seen["host"], seen["port"] = sock.getsockname()[:2]
        seen["log_level"] = log_level
        seen["workflows"] = [rt.name for rt in app.state.interlock.workflows]
        return True

    monkeypatch.setattr(server, "serve_one", serve_one)
    return seen


def test_serve_validates_migrates_and_prints_urls(
    sqlite_url: str, support_manifest_path: Path, fake_uvicorn: dict[str, Any]
) -> None:
    port = free_port()
    result = cli("serve", "--manifest", str(support_manifest_path), "--db", sqlite_url, "--port", str(port))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"http://127.0.0.1:{port}/v1" in result.stdout
    assert f"http://127.0.0.1:{port}/mcp" in result.stdout
    assert f"http://127.0.0.1:{port}/ui" in result.stdout
    assert f"database {sqlite_url}" in result.stdout
    assert fake_uvicorn["host"] == "127.0.0.1"
    assert fake_uvicorn["port"] == port
    assert fake_uvicorn["workflows"] == [WF]

    other = free_port()
    as_json = cli(
        "serve", "-m", str(support_manifest_path), "--db", sqlite_url, "--json", "--port", str(other)
    )
    assert as_json.exit_code == 0
    urls = json.loads(as_json.stdout)
    assert urls["api"] == f"http://127.0.0.1:{other}/v1"
    assert urls["workflows"] == [{"name": WF, "version": "1.0.0"}]


def test_serve_refuses_public_host_with_default_secrets(
    sqlite_url: str, support_manifest_path: Path, fake_uvicorn: dict[str, Any]
) -> None:
    result = cli("serve", "-m", str(support_manifest_path), "--db", sqlite_url, "--host", "0.0.0.0")
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.stderr
    for name in (
        "identity.signing_seed",
        "audit.signing_seed",
        "INTERLOCK_IDENTITY__SIGNING_SEED",
        "INTERLOCK_AUDIT__SIGNING_SEED",
    ):
        assert name in result.stderr
    assert fake_uvicorn == {}
    as_json = cli(
        "serve", "-m", str(support_manifest_path), "--db", sqlite_url, "--host", "10.0.0.5", "--json"
    )
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["code"] == "default_secrets_in_use"


def test_serve_on_public_host_once_secrets_are_set(
    sqlite_url: str,
    support_manifest_path: Path,
    fake_uvicorn: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INTERLOCK_IDENTITY__SIGNING_SEED", "a-long-random-value-for-tokens")
    monkeypatch.setenv("INTERLOCK_AUDIT__SIGNING_SEED", "another-long-random-value-for-audit")
    monkeypatch.setenv("INTERLOCK_PACKAGES__SIGNING_SEED", "a-third-long-random-value-for-packages")
    port = free_port("0.0.0.0")
    result = cli(
        "serve",
        "-m",
        str(support_manifest_path),
        "--db",
        sqlite_url,
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    )
    assert result.exit_code == 0, result.stderr
    assert fake_uvicorn["host"] == "0.0.0.0"


def test_serve_stops_before_listening_on_a_bad_manifest(
    tmp_path: Path, sqlite_url: str, support_manifest_path: Path, fake_uvicorn: dict[str, Any]
) -> None:
    broken = tmp_path / "workflow.yaml"
    broken.write_text(support_manifest_path.read_text().replace("verb: draft\n", "verb: drafts\n"))
    result = cli("serve", "-m", str(broken), "--db", sqlite_url)
    assert result.exit_code == 1
    assert f"{broken}:" in result.stderr
    assert fake_uvicorn == {}
    nothing = cli("serve", "--db", sqlite_url)
    assert nothing.exit_code == 2
    assert "--manifest" in nothing.stderr
    absent = cli("serve", "-m", str(tmp_path / "nope.yaml"), "--db", sqlite_url)
    assert absent.exit_code == 2
