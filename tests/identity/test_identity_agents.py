from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from identity_helpers import Clock
from interlock._internal.audit.chain import iter_events
from interlock._internal.identity.agents import AgentStore
from interlock._internal.identity.secrets import hash_secret
from interlock._internal.store.tables import agents, audit_events
from interlock.exceptions import ArgumentsInvalid, AuthenticationError, ConflictError, NotFound


def audit_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(audit_events).order_by(audit_events.c.seq)))


def all_agent_values(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(v) for row in conn.execute(select(agents)) for v in row]


def test_create_get_list(agent_store: AgentStore, clock: Clock) -> None:
    creds = agent_store.create("drafter", workflow="support-triage", environment="prod", actor="alice")
    assert creds.client_id == "drafter"
    assert creds.client_secret.startswith("ilsk_")
    assert creds.client_secret not in repr(creds)

    agent_store.create("other", workflow="billing", environment="staging", actor="alice")
    record = agent_store.get("drafter")
    assert (record.workflow, record.environment, record.status) == ("support-triage", "prod", "active")
    assert record.created_at == clock.t
    assert record.active
    assert record.revoked_at is None
    assert record.last_seen_at is None

    assert [a.id for a in agent_store.list()] == ["drafter", "other"]
    assert [a.id for a in agent_store.list(workflow="billing")] == ["other"]
    assert agent_store.list(workflow="nope") == []


def test_secret_stored_only_as_hash(agent_store: AgentStore, engine: Engine) -> None:
    creds = agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    rotated = agent_store.rotate_secret("drafter", actor="alice")
    values = all_agent_values(engine)
    body = creds.client_secret.removeprefix("ilsk_")
    for secret in (creds.client_secret, rotated.client_secret):
        assert not any(secret.removeprefix("ilsk_") in v for v in values)
    assert not any(body in v for v in values)
    with engine.connect() as conn:
        stored = conn.execute(select(agents.c.secret_hash)).scalar_one()
    assert stored == hash_secret(rotated.client_secret)


def test_duplicate_active_id_conflicts(agent_store: AgentStore) -> None:
    agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    with pytest.raises(ConflictError, match="drafter"):
        agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")


def test_revoke_then_recreate(agent_store: AgentStore, clock: Clock) -> None:
    first = agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    clock.advance(5)
    record = agent_store.revoke("drafter", actor="bob", reason="leaked")
    assert (record.status, record.revoked_by, record.revoked_at) == ("revoked", "bob", clock.t)
    assert agent_store.get("drafter") == record
    # Revoking again is a no-op.
    assert agent_store.revoke("drafter", actor="carol") == record
    with pytest.raises(ConflictError, match="revoked"):
        agent_store.rotate_secret("drafter", actor="bob")

    second = agent_store.create("drafter", workflow="wf2", environment="dev", actor="alice")
    assert second.client_secret != first.client_secret
    again = agent_store.get("drafter")
    assert again.active
    assert again.workflow == "wf2"
    assert again.revoked_at is None


def test_unknown_agent(agent_store: AgentStore) -> None:
    with pytest.raises(NotFound):
        agent_store.get("ghost")
    with pytest.raises(NotFound):
        agent_store.revoke("ghost", actor="alice")
    with pytest.raises(NotFound):
        agent_store.rotate_secret("ghost", actor="alice")
    assert agent_store.lookup("ghost") is None


@pytest.mark.parametrize("bad", ["", "1abc", "has space", "x" * 129, "semi;colon"])
def test_invalid_names_rejected(agent_store: AgentStore, bad: str) -> None:
    with pytest.raises(ArgumentsInvalid) as err:
        agent_store.create(bad, workflow="wf", environment="prod", actor="alice")
    assert err.value.field == "agent_id"
    with pytest.raises(ArgumentsInvalid):
        agent_store.create("ok", workflow=bad, environment="prod", actor="alice")
    with pytest.raises(ArgumentsInvalid):
        agent_store.create("ok", workflow="wf", environment=bad, actor="alice")


def test_check_secret_no_oracle(agent_store: AgentStore) -> None:
    creds = agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    assert agent_store.check_secret("drafter", creds.client_secret).record.id == "drafter"
    messages = set()
    for client_id, secret in [
        ("drafter", "ilsk_wrong"),
        ("ghost", creds.client_secret),
        ("ghost", "ilsk_wrong"),
        ("", ""),
    ]:
        with pytest.raises(AuthenticationError) as err:
            agent_store.check_secret(client_id, secret)
        assert err.value.code == "invalid_client"
        messages.add(str(err.value))
    assert len(messages) == 1


def test_touch_is_throttled(agent_store: AgentStore, engine: Engine, clock: Clock) -> None:
    agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    assert agent_store.touch("drafter") is True
    assert agent_store.get("drafter").last_seen_at == clock.t
    first = clock.t
    clock.advance(10)
    assert agent_store.touch("drafter") is False
    assert agent_store.get("drafter").last_seen_at == first
    clock.advance(25)
    assert agent_store.touch("drafter") is True
    assert agent_store.get("drafter").last_seen_at == clock.t

    # Another replica (its own store) writing within the interval leaves the row alone.
    other = AgentStore(engine, clock=clock)
    clock.advance(1)
    assert other.touch("drafter") is True
    assert agent_store.get("drafter").last_seen_at == clock.t - 1


def test_identity_changes_are_audited(agent_store: AgentStore, engine: Engine) -> None:
    creds = agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    rotated = agent_store.rotate_secret("drafter", actor="alice")
    agent_store.revoke("drafter", actor="bob", reason="left the team")
    agent_store.revoke("drafter", actor="bob")  # no second event
    agent_store.create("drafter", workflow="wf", environment="dev", actor="carol")
    events = list(iter_events(engine))
    assert [(e.kind, e.actor, e.workflow) for e in events] == [
        ("agent.created", "alice", "wf"),
        ("agent.secret_rotated", "alice", "wf"),
        ("agent.revoked", "bob", "wf"),
        ("agent.created", "carol", "wf"),
    ]
    ids = {"agent_id": "drafter", "workflow": "wf"}
    assert [e.data for e in events] == [
        {**ids, "environment": "prod", "replaced_revoked": False},
        {**ids, "environment": "prod"},
        {**ids, "environment": "prod", "reason": "left the team"},
        {**ids, "environment": "dev", "replaced_revoked": True},
    ]
    rows = audit_rows(engine)
    for secret in (creds.client_secret, rotated.client_secret):
        for row in rows:
            assert secret.removeprefix("ilsk_") not in row.body
            assert hash_secret(secret) not in row.body


def test_failed_create_appends_nothing(agent_store: AgentStore, engine: Engine) -> None:
    agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    with pytest.raises(ConflictError):
        agent_store.create("drafter", workflow="wf", environment="prod", actor="alice")
    assert [r.kind for r in audit_rows(engine)] == ["agent.created"]


def test_concurrent_creates_of_one_id_yield_one_agent(agent_store: AgentStore, engine: Engine) -> None:
    def attempt(i: int) -> str:
        try:
            agent_store.create("drafter", workflow="wf", environment=f"env{i}", actor="alice")
        except ConflictError:
            return "conflict"
        return "created"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    assert outcomes.count("created") == 1
    assert outcomes.count("conflict") == 7
    assert [e.kind for e in iter_events(engine)] == ["agent.created"]
