"""Encryption at rest of stored payloads, on SQLite and PostgreSQL.

With ``storage.encryption_key_id`` set, no payload column holds plaintext, and everything that
reads payloads (the service the API and console call, replay, what-if, evidence bundles, retention)
still sees them in clear; the audit chain verifies. After a key rotation, values written under the
old key still read; a missing or wrong key fails with an error naming the key id.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from conftest import SUPPORT_TRIAGE, Harness
from interlock import Interlock, Settings
from interlock._internal.audit.evidence import export_bundle, verify_bundle
from interlock._internal.audit.keys import AuditKey
from interlock._internal.evals.whatif import what_if
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.runs.replay import load_run, replay_run
from interlock._internal.runs.retention import purge_payloads
from interlock._internal.server import create_app
from interlock._internal.settings import DatabaseSettings, StorageSettings
from interlock._internal.store.encryption import PREFIX, Keyring
from interlock._internal.store.engine import make_engine
from interlock.exceptions import ConfigError, StorageError

K1, K2 = secrets.token_hex(32), secrets.token_hex(32)
SEED = "encryption-test-audit-seed-0123456789"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "parcel-lost-in-transit"}
# Strings only the payloads carry: the trigger, the arguments, the tool's result.
SECRETS = ("trigger-marker-4711", "parcel-lost-in-transit", "charged twice")
PAYLOAD_COLUMNS = [
    ("runs", "trigger"),
    ("steps", "arguments"),
    ("steps", "result"),
    ("decisions", "arguments"),
    ("approvals", "arguments"),
    ("approvals", "payload"),
    ("approvals", "package"),
    ("approvals", "outcome"),
    ("idempotency", "outcome"),
    ("executions", "payload"),
    ("webhook_deliveries", "payload"),
    ("notification_deliveries", "payload"),
]


def _storage(current: str | None, **keys: str) -> dict[str, Any]:
    return {"encryption_keys": keys, "encryption_key_id": current}


def _raw(engine: Engine) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table, column in PAYLOAD_COLUMNS:
            rows = conn.execute(text(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")).scalars()
            found[f"{table}.{column}"] = [str(v) for v in rows]
    return found


def _busy_run(harness: Harness) -> tuple[str, str]:
    il = harness.il
    alice, _ = il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    token = harness.tokens["triage-bot"]
    run = il.start_run(token, trigger={"note": "trigger-marker-4711"}).id
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"
    pending = harness.act(run, "payments.refund", REFUND, idempotency_key="refund-1")
    assert pending.status == "pending_approval"
    assert pending.approval_id is not None
    il.approvals.decide(pending.approval_id, operator=alice.principal(), approve=True, comment="ok")
    il.finish_run(token, run)
    return run, pending.approval_id


def test_no_payload_is_stored_in_clear_and_every_reader_sees_plaintext(db_url: str, tmp_path: Path) -> None:
    harness = Harness(db_url, audit={"signing_seed": SEED}, storage=_storage("k1", k1=K1))
    try:
        il = harness.il
        run, approval = _busy_run(harness)
        raw = _raw(il.engine)
        for column in ("runs.trigger", "steps.arguments", "steps.result", "decisions.arguments"):
            assert raw[column], f"{column} is empty: nothing was tested"
        for column, values in raw.items():
            for value in values:
                assert value.startswith(PREFIX + "k1:"), f"{column} holds {value[:60]!r}"
                assert not any(s in value for s in SECRETS)
        # The service behind the API and the console reads plaintext.
        view = il.get_run(run)
        steps = view.steps_detail
        assert steps[0].arguments == {"ticket_id": "T-1001"}
        assert "charged twice" in str(steps[0].result)
        assert il.approvals.get(approval).arguments == REFUND
        # ... and so does the API, for an operator.
        _, op_token = il.operators.create("olivia", roles=["admin", "auditor"], workflows=None, actor="test")
        with TestClient(create_app(interlock=il)) as client:
            body = client.get(f"/v1/runs/{run}", headers={"Authorization": f"Bearer {op_token}"}).json()
        assert "parcel-lost-in-transit" in str(body)
        assert body["trigger"] == {"note": "trigger-marker-4711"}
        # Replay, what-if, the audit log and evidence bundles.
        record = load_run(il.engine, run)
        assert record.run["trigger"] == {"note": "trigger-marker-4711"}
        replayed = replay_run(record, harness.runtime)
        assert replayed.steps
        assert not replayed.changed
        report = what_if(il.engine, load_manifest(SUPPORT_TRIAGE), workers=1)
        assert report.total >= 3
        assert report.changed == 0  # its second pass (history rules) read the encrypted steps too
        assert il.verify_audit().ok
        key = AuditKey.from_seed(SEED)
        bundle = export_bundle(il.engine, run, key)
        assert bundle["steps"][1]["arguments"] == REFUND
        checked = verify_bundle(bundle, key.public)
        assert checked.ok, checked.problems
        # Retention: purge markers hold only a hash and stay readable; the chain still verifies.
        purged = purge_payloads(il.engine, older_than_s=0, actor="test")
        assert purged.total > 0
        assert il.get_run(run).steps_detail[0].arguments == {
            "purged": True,
            "sha256": steps[0].decision.args_hash if steps[0].decision else None,
        }
        assert il.verify_audit().ok
        assert verify_bundle(export_bundle(il.engine, run, key), key.public).ok
    finally:
        harness.close()


def test_rotation_keeps_old_values_readable_and_a_missing_key_is_named(db_url: str) -> None:
    harness = Harness(db_url, storage=_storage("k1", k1=K1))
    try:
        first = harness.run()
        harness.act(first, "tickets.get", {"ticket_id": "T-1001"})
    finally:
        harness.close()
    # Rotate: k2 encrypts new values, k1 stays listed to read the old ones.
    rotated = Interlock(Settings(database={"url": db_url}, storage=_storage("k2", k1=K1, k2=K2)))  # type: ignore[arg-type]
    try:
        rotated.load_workflow(SUPPORT_TRIAGE)
        assert rotated.get_run(first).steps_detail[0].arguments == {"ticket_id": "T-1001"}
        creds = rotated.agents.rotate_secret("triage-bot", actor="test")
        token = rotated.issue_token(creds.client_id, creds.client_secret).token
        second = rotated.start_run(token, trigger={"n": 2}).id
        assert rotated.act(token, second, "tickets.get", {"ticket_id": "T-1002"}).status == "executed"
        with rotated.engine.connect() as conn:
            by_key = {
                str(v).split(":")[1] for v in conn.execute(text("SELECT arguments FROM steps")).scalars()
            }
        assert by_key == {"k1", "k2"}
    finally:
        rotated.close()
    # Without k1, reading an old value names the key it needs.
    engine = make_engine(DatabaseSettings(url=db_url), StorageSettings(**_storage("k2", k2=K2)))
    try:
        from interlock._internal.runs.replay import load_run as load

        with pytest.raises(ConfigError, match="key id 'k1', which storage.encryption_keys does not hold"):
            load(engine, first)
    finally:
        engine.dispose()
    # A different key under the same id fails to decrypt, naming the id.
    engine = make_engine(DatabaseSettings(url=db_url), StorageSettings(**_storage("k1", k1=K2, k2=K2)))
    try:
        with pytest.raises(StorageError, match="does not decrypt with key id 'k1'"):
            load_run(engine, first)
    finally:
        engine.dispose()
    # An engine with no key at all says which key id it would need.
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        with pytest.raises(ConfigError, match="key id 'k"):
            load_run(engine, second)
    finally:
        engine.dispose()


def test_turning_encryption_on_keeps_plain_values_readable(db_url: str) -> None:
    harness = Harness(db_url)
    try:
        run = harness.run()
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    finally:
        harness.close()
    il = Interlock(Settings(database={"url": db_url}, storage=_storage("k1", k1=K1)))  # type: ignore[arg-type]
    try:
        assert il.get_run(run).steps_detail[0].arguments == {"ticket_id": "T-1001"}
    finally:
        il.close()


@pytest.mark.parametrize(
    ("keys", "current", "message"),
    [
        ({"k1": "abcd"}, "k1", "storage.encryption_keys.k1: expected a 32-byte AES-256 key"),
        ({"k1": K1}, "k9", "storage.encryption_key_id is 'k9', which storage.encryption_keys does not hold"),
        ({"bad id": K1}, None, "key id 'bad id' must be"),
    ],
)
def test_bad_key_settings_are_refused_naming_the_setting(
    keys: dict[str, str], current: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Keyring.from_settings(StorageSettings(**_storage(current, **keys)).encryption_keys, current)


def test_a_value_moved_to_another_column_does_not_decrypt() -> None:
    ring = Keyring.from_settings(StorageSettings(**_storage("k1", k1=K1)).encryption_keys, "k1")
    sealed = ring.seal('{"a":1}', "steps.arguments")
    assert ring.open(sealed, "steps.arguments") == '{"a":1}'
    with pytest.raises(StorageError, match="key id 'k1'"):
        ring.open(sealed, "steps.result")
    assert ring.seal('{"a":1}', "steps.arguments") != sealed  # a fresh nonce every time


def test_db_keys_and_reencrypt_finish_a_rotation(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from interlock._internal.cli.db import app

    harness = Harness(db_url, storage=_storage("k1", k1=K1))
    try:
        run, approval = _busy_run(harness)
    finally:
        harness.close()
    clear = Interlock(Settings(database={"url": db_url}))  # type: ignore[arg-type]
    try:  # some values in clear too, as if written before encryption was turned on
        clear.load_workflow(SUPPORT_TRIAGE)
        creds = clear.agents.rotate_secret("triage-bot", actor="test")
        token = clear.issue_token(creds.client_id, creds.client_secret).token
        plain = clear.start_run(token).id
        assert clear.act(token, plain, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"
    finally:
        clear.close()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INTERLOCK_STORAGE__ENCRYPTION_KEYS", json.dumps({"k1": K1, "k2": K2}))
    monkeypatch.setenv("INTERLOCK_STORAGE__ENCRYPTION_KEY_ID", "k2")
    runner = CliRunner()
    before = runner.invoke(app, ["keys", "--db", db_url, "--json"])
    assert before.exit_code == 0, before.output
    assert set(json.loads(before.stdout)["keys"]) == {"(clear)", "k1"}
    done = runner.invoke(app, ["reencrypt", "--db", db_url, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["total"] > 0
    after = runner.invoke(app, ["keys", "--db", db_url, "--json"])
    assert set(json.loads(after.stdout)["keys"]) == {"k2"}
    # Only k2 is needed now, and everything still reads and verifies.
    il = Interlock(Settings(database={"url": db_url}, storage=_storage("k2", k2=K2)))  # type: ignore[arg-type]
    try:
        assert il.get_run(plain).steps_detail[0].arguments == {"ticket_id": "T-1001"}
        assert il.approvals.get(approval).arguments == REFUND
        assert load_run(il.engine, run).run["trigger"] == {"note": "trigger-marker-4711"}
        assert il.verify_audit().ok
    finally:
        il.close()
    # Without a current key there is nothing to re-encrypt with.
    monkeypatch.delenv("INTERLOCK_STORAGE__ENCRYPTION_KEY_ID")
    refused = runner.invoke(app, ["reencrypt", "--db", db_url])
    assert refused.exit_code != 0
    assert "storage.encryption_key_id is not set" in refused.output
