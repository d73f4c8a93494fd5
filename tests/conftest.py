"""Shared fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL is found at ``INTERLOCK_TEST_PG`` (default: the local ``test`` database). When it does
not answer, its tests are skipped and the run ends by saying so plainly; with
``INTERLOCK_REQUIRE_POSTGRES=1`` (as ``.ci/run`` sets) they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from identity_helpers import Clock
from interlock._internal.identity.agents import AgentStore
from interlock._internal.identity.operators import OperatorStore
from interlock._internal.identity.tokens import TokenService
from interlock._internal.settings import DatabaseSettings, IdentitySettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade

PG_BASE = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("INTERLOCK_REQUIRE_POSTGRES") == "1"
REPO = Path(__file__).resolve().parent.parent
SUPPORT_TRIAGE = REPO / "examples" / "support-triage" / "workflow.yaml"

_pg_state: dict[str, object] = {}


def postgres_available() -> bool:
    if "ok" not in _pg_state:
        try:
            import psycopg

            with psycopg.connect(
                PG_BASE.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3
            ) as conn:
                conn.execute("select 1")
            _pg_state["ok"] = True
        except Exception as exc:  # any failure means: not available here
            _pg_state["ok"] = False
            _pg_state["why"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return bool(_pg_state["ok"])


def _require_pg() -> None:
    if postgres_available():
        return
    msg = f"PostgreSQL not reachable at {PG_BASE}: {_pg_state.get('why')}"
    if REQUIRE_PG:
        pytest.fail(msg + " (INTERLOCK_REQUIRE_POSTGRES=1)")
    _pg_state["skipped"] = int(_pg_state.get("skipped", 0)) + 1  # type: ignore[call-overload]
    pytest.skip(msg)


def fresh_pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a brand-new schema, dropped afterwards."""
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    raw = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(raw, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_BASE else "?"
    try:
        yield f"{PG_BASE}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(raw, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL, once per engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'interlock.db'}"
    else:
        _require_pg()
        yield from fresh_pg_url()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL URL only (for multi-process tests)."""
    _require_pg()
    yield from fresh_pg_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'interlock.db'}"


@pytest.fixture
def support_manifest_path() -> Path:
    return SUPPORT_TRIAGE


@pytest.fixture(autouse=True)
def _desk_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own copy of the example help desk (tickets, customers)."""
    path = tmp_path / "support-desk.db"
    monkeypatch.setenv("SUPPORT_DESK_DB", str(path))
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if "PostgreSQL not reachable" in str(getattr(r, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} PostgreSQL tests were SKIPPED: PostgreSQL did not answer. "
            "Only SQLite was tested. Set INTERLOCK_TEST_PG or start PostgreSQL to run them.",
            yellow=True,
            bold=True,
        )


# ---- an embedded Interlock with the reference workflow and its two agents ----------------------


class Harness:
    """The reference workflow on a fresh database, with both agents' tokens ready."""

    def __init__(self, db_url: str, manifest: object = SUPPORT_TRIAGE, **settings_overrides: object) -> None:
        from interlock import Interlock, Settings

        settings = Settings(database={"url": db_url}, **settings_overrides)  # type: ignore[arg-type]
        self.il = Interlock(settings)
        self.il.migrate()
        self.runtime = self.il.load_workflow(manifest)  # type: ignore[arg-type]
        self.workflow = self.runtime.name
        self.tokens: dict[str, str] = {}
        self.secrets: dict[str, str] = {}
        for agent in self.runtime.manifest.agents:
            creds = self.il.agents.create(
                agent.id, workflow=self.workflow, environment=agent.environment, actor="test"
            )
            self.secrets[agent.id] = creds.client_secret
            self.tokens[agent.id] = self.il.issue_token(creds.client_id, creds.client_secret).token

    def run(self, agent: str = "triage-bot") -> str:
        return self.il.start_run(self.tokens[agent], trigger={"ticket": "T-1001"}).id

    def act(self, run_id: str, tool: str, args: object, agent: str = "triage-bot", **kw: object):  # type: ignore[no-untyped-def]
        return self.il.act(self.tokens[agent], run_id, tool, args, **kw)  # type: ignore[arg-type]

    def close(self) -> None:
        self.il.close()


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    h = Harness(db_url)
    yield h
    h.close()


@pytest.fixture
def desk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The example help desk module (tickets, customers, refunds) for checking final state."""
    import importlib.util

    path = REPO / "examples" / "support-triage" / "support_desk.py"
    spec = importlib.util.spec_from_file_location("support_desk_for_tests", path)
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- identity: a migrated database on each engine and a clock tests can move ------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def agent_store(engine: Engine, clock: Clock) -> AgentStore:
    return AgentStore(engine, clock=clock)


@pytest.fixture
def operator_store(engine: Engine, clock: Clock) -> OperatorStore:
    return OperatorStore(engine, clock=clock)


@pytest.fixture
def identity_settings() -> IdentitySettings:
    return IdentitySettings(signing_seed="test-seed-for-identity", issuer="interlock-test")


@pytest.fixture
def token_service(identity_settings: IdentitySettings, clock: Clock) -> TokenService:
    return TokenService(identity_settings, clock=clock)
