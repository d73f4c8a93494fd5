"""Fixtures for identity tests: a migrated database on each engine and a clock tests can move."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from identity_helpers import Clock
from sqlalchemy.engine import Engine

from interlock._internal.identity.agents import AgentStore
from interlock._internal.identity.operators import OperatorStore
from interlock._internal.identity.tokens import TokenService
from interlock._internal.settings import DatabaseSettings, IdentitySettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade


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
