"""``interlock db current | upgrade | check``, ``interlock --version``, and ``serve`` refusing a
database a newer Interlock migrated."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from sqlalchemy import MetaData, update
from typer.testing import CliRunner

from interlock import __version__
from interlock._internal.cli.db import EXIT_BEHIND, EXIT_NEWER, app
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import migrate
from interlock._internal.store.engine import make_engine
from servers import interlock_command

runner = CliRunner()


def _json(args: list[str]) -> tuple[int, dict]:
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        meta = MetaData()
        meta.reflect(engine, only=["alembic_version"])
        with engine.begin() as conn:
            conn.execute(update(meta.tables["alembic_version"]).values(version_num=revision))
    finally:
        engine.dispose()


def test_current_upgrade_check_on_each_engine(db_url: str) -> None:
    head = migrate.head_revision()
    code, out = _json(["check", "--db", db_url])
    assert code == EXIT_BEHIND
    assert out["state"] == "empty"
    assert out["ok"] is False

    code, out = _json(["current", "--db", db_url])
    assert code == 0
    assert out == {"current": None, "head": head, "state": "empty", "pending": migrate.revisions()}

    code, out = _json(["upgrade", "--db", db_url])
    assert code == 0
    assert out == {"from": None, "to": head, "applied": migrate.revisions()}

    code, out = _json(["check", "--db", db_url])
    assert code == 0, out
    assert out["ok"] is True
    assert out["drift"] == []

    result = runner.invoke(app, ["upgrade", "--db", db_url])
    assert result.exit_code == 0
    assert "nothing to apply" in result.stdout


def test_check_says_which_migrations_are_pending(db_url: str) -> None:
    first = migrate.revisions()[0]
    engine = make_engine(DatabaseSettings(url=db_url))
    migrate.upgrade(engine, first)
    engine.dispose()
    result = runner.invoke(app, ["check", "--db", db_url])
    assert result.exit_code == EXIT_BEHIND
    assert f"at {first}" in result.stdout
    assert migrate.head_revision() in result.stdout


def test_a_newer_database_is_refused_by_upgrade_check_and_serve(
    sqlite_url: str, tmp_path: Path, support_manifest_path: Path
) -> None:
    assert runner.invoke(app, ["upgrade", "--db", sqlite_url]).exit_code == 0
    _set_revision(sqlite_url, "0999_newer")

    code, out = _json(["check", "--db", sqlite_url])
    assert code == EXIT_NEWER
    assert out["state"] == "newer"

    code, out = _json(["upgrade", "--db", sqlite_url])
    assert code == 1
    assert out["error"]["code"] == "schema_too_new"

    proc = subprocess.run(
        [
            *interlock_command(),
            "serve",
            "--db",
            sqlite_url,
            "--manifest",
            str(support_manifest_path),
            "--port",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "schema_too_new"
    assert "0999_newer" in error["message"]
    assert __version__ in error["message"]


def test_version() -> None:
    proc = subprocess.run([*interlock_command(), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"interlock {__version__} (database schema {migrate.head_revision()})"


def test_check_wait_returns_once_the_schema_is_current(sqlite_url: str) -> None:
    # A database already current returns at once even with a long --wait.
    assert runner.invoke(app, ["upgrade", "--db", sqlite_url]).exit_code == 0
    code, out = _json(["check", "--db", sqlite_url, "--wait", "600"])
    assert code == 0
    assert out["ok"] is True


def test_check_wait_holds_until_another_process_migrates(sqlite_url: str, tmp_path: Path) -> None:
    """What a serving pod's init container does while the migration Job runs."""
    waiting = subprocess.Popen(
        [*interlock_command(), "db", "check", "--db", sqlite_url, "--wait", "600", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        # It has looked once and found the database empty; it keeps waiting.
        assert waiting.stderr is not None
        first = waiting.stderr.readline()
        assert first.startswith("waiting for the schema"), first
        assert waiting.poll() is None
        engine = make_engine(DatabaseSettings(url=sqlite_url))
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        out, err = waiting.communicate(timeout=300)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, out + err
    assert json.loads(out)["state"] == "current"
