"""``interlock audit verify`` on good, empty, tampered and unreachable databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from interlock._internal.audit.chain import append_event_tx
from interlock._internal.cli.audit import app
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No interlock.toml or INTERLOCK_* settings from the surroundings leak into the command.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)


def _chain(url: str, n: int) -> str:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        upgrade(engine)
        events = [append_event_tx(engine, kind="k", actor="a", data={"i": i}) for i in range(n)]
    finally:
        engine.dispose()
    return events[-1].hash if events else ""


def _tamper(url: str, statement: str) -> None:
    engine = make_engine(DatabaseSettings(url=url))
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def test_no_database_is_refused_and_an_empty_one_verifies(db_url: str) -> None:
    missing = runner.invoke(app, ["verify", "--db", db_url])
    assert missing.exit_code == 1
    assert "no Interlock database at" in missing.stderr
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    result = runner.invoke(app, ["verify", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "audit chain OK: 0 events, tip 000000000000"


def test_good_chain(db_url: str) -> None:
    tip = _chain(db_url, 3)
    result = runner.invoke(app, ["verify", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"audit chain OK: 3 events, tip {tip[:12]}"
    result = runner.invoke(app, ["verify", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["ok"], report["events"], report["tip_hash"]) == (True, 3, tip)


def test_tampered_chain_names_the_event(db_url: str) -> None:
    _chain(db_url, 4)
    _tamper(db_url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    result = runner.invoke(app, ["verify", "--db", db_url])
    assert result.exit_code == 1
    assert "event 2 was altered: its actor column reads 'mallory'" in result.output
    result = runner.invoke(app, ["verify", "--db", db_url, "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "audit_broken"
    assert error["message"].startswith("event 2 was altered")


def test_truncated_chain(db_url: str) -> None:
    _chain(db_url, 4)
    _tamper(db_url, "DELETE FROM audit_events WHERE seq > 2")
    result = runner.invoke(app, ["verify", "--db", db_url])
    assert result.exit_code == 1
    assert "event 3 was deleted" in result.output


def test_unreachable_database_is_an_error_not_a_crash() -> None:
    result = runner.invoke(app, ["verify", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    assert result.exit_code == 1
    assert "error" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
