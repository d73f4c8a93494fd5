from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import iter_events
from interlock._internal.identity.operators import Operator, OperatorStore
from interlock._internal.identity.secrets import hash_secret
from interlock._internal.store.tables import audit_events, operators
from interlock.exceptions import (
    ArgumentsInvalid,
    AuthenticationError,
    ConflictError,
    NotFound,
    PermissionDenied,
)


def test_create_and_authenticate(operator_store: OperatorStore) -> None:
    record, token = operator_store.create(
        "alice", roles=["approver", "owner", "approver"], workflows=["support-triage"], actor="root"
    )
    assert token.startswith("ilop_")
    assert record.roles == ("approver", "owner")
    assert record.workflows == ("support-triage",)
    assert record.active

    who = operator_store.authenticate(token)
    assert who == Operator(id="alice", roles=("approver", "owner"), workflows=("support-triage",))
    assert operator_store.get("alice") == record


def test_bad_tokens(operator_store: OperatorStore) -> None:
    _, token = operator_store.create("alice", roles=["admin"], workflows=None, actor="root")
    for bad in ("", "ilop_nope", token + "x", token[:-1], "x" * 10_000, "ilsk_" + token[5:]):
        with pytest.raises(AuthenticationError) as err:
            operator_store.authenticate(bad)
        assert err.value.code == "token_invalid"
        assert str(err.value) == "invalid operator token"


def test_token_stored_only_as_hash(operator_store: OperatorStore, engine: Engine) -> None:
    _, token = operator_store.create("alice", roles=["admin"], workflows=None, actor="root")
    with engine.connect() as conn:
        rows = list(conn.execute(select(operators)))
    values = [str(v) for row in rows for v in row]
    assert not any(token.removeprefix("ilop_") in v for v in values)
    assert rows[0].token_hash == hash_secret(token)


def test_roles_and_scopes() -> None:
    scoped = Operator(id="bob", roles=("approver",), workflows=("support-triage",))
    assert scoped.can("approver", "support-triage")
    assert not scoped.can("approver", "billing")
    assert not scoped.can("approver")  # not tied to one workflow: needs an unscoped operator
    assert not scoped.can("owner", "support-triage")

    admin = Operator(id="root", roles=("admin",), workflows=None)
    assert admin.can("admin")
    assert admin.can("admin", "anything")
    assert not admin.can("approver", "support-triage")  # separation of duties

    scoped.require("approver", "support-triage")
    with pytest.raises(PermissionDenied, match="lacks role 'approver' for workflow 'billing'"):
        scoped.require("approver", "billing")
    with pytest.raises(ArgumentsInvalid, match="'approve'"):
        scoped.can("approve", "support-triage")


@pytest.mark.parametrize(
    ("roles", "workflows", "needle"),
    [
        (["admin", "superuser"], None, "'superuser'"),
        ([], None, "at least one role"),
        ("admin", None, "list of role names"),
        (["owner"], [], "workflows is empty"),
        (["owner"], ["bad name"], "'bad name'"),
    ],
)
def test_invalid_roles_and_workflows(
    operator_store: OperatorStore, roles: list[str], workflows: list[str] | None, needle: str
) -> None:
    with pytest.raises(ArgumentsInvalid, match=needle):
        operator_store.create("alice", roles=roles, workflows=workflows, actor="root")
    assert operator_store.list() == []


def test_disable_rotate_list(operator_store: OperatorStore, engine: Engine) -> None:
    _, alice_token = operator_store.create("alice", roles=["auditor"], workflows=None, actor="root")
    _, bob_token = operator_store.create("bob", roles=["owner"], workflows=["wf"], actor="root")
    with pytest.raises(ConflictError):
        operator_store.create("bob", roles=["owner"], workflows=["wf"], actor="root")
    assert [o.id for o in operator_store.list()] == ["alice", "bob"]

    new_token = operator_store.rotate_token("alice", actor="root")
    with pytest.raises(AuthenticationError):
        operator_store.authenticate(alice_token)
    assert operator_store.authenticate(new_token).id == "alice"

    disabled = operator_store.disable("bob", actor="root")
    assert disabled.status == "disabled"
    assert operator_store.disable("bob", actor="root") == disabled
    with pytest.raises(AuthenticationError) as err:
        operator_store.authenticate(bob_token)
    assert err.value.code == "operator_disabled"
    with pytest.raises(ConflictError):
        operator_store.rotate_token("bob", actor="root")

    # A disabled id can be reused, with a fresh token; the old one stays dead.
    _, bob_again = operator_store.create("bob", roles=["approver"], workflows=None, actor="root")
    assert operator_store.authenticate(bob_again).roles == ("approver",)
    with pytest.raises(AuthenticationError):
        operator_store.authenticate(bob_token)

    for call in (
        lambda: operator_store.get("ghost"),
        lambda: operator_store.disable("ghost", actor="root"),
        lambda: operator_store.rotate_token("ghost", actor="root"),
    ):
        with pytest.raises(NotFound):
            call()

    with engine.connect() as conn:
        events = list(conn.execute(select(audit_events).order_by(audit_events.c.seq)))
    assert [(e.kind, e.actor) for e in events] == [
        ("operator.created", "root"),
        ("operator.created", "root"),
        ("operator.token_rotated", "root"),
        ("operator.disabled", "root"),
        ("operator.created", "root"),
    ]
    for event in events:
        for secret in (alice_token, bob_token, new_token, bob_again):
            assert secret.removeprefix("ilop_") not in event.body
            assert hash_secret(secret) not in event.body
    data = [e.data for e in iter_events(engine)]
    assert data[0] == {
        "operator_id": "alice",
        "roles": ["auditor"],
        "workflows": None,
        "replaced_disabled": False,
    }
    assert data[1] == {
        "operator_id": "bob",
        "roles": ["owner"],
        "workflows": ["wf"],
        "replaced_disabled": False,
    }
    assert data[2] == {"operator_id": "alice"}
    assert data[3] == {"operator_id": "bob", "roles": ["owner"], "workflows": ["wf"]}
    assert data[4] == {
        "operator_id": "bob",
        "roles": ["approver"],
        "workflows": None,
        "replaced_disabled": True,
    }
