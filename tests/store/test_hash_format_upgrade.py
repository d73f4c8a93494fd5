"""Migration 0008 relabels a log written in the legacy hash format, and it still verifies.

The log is written the way code before hash format 2 wrote it, at the schema revision just before
0008: bodies in the legacy canonical form (Python's ``json.dumps``, sorted keys, compact), some of
which differ from RFC 8785 (an integral float, a float below 1e-4, a key outside the Basic
Multilingual Plane), with a ``…/v1`` checkpoint signed over the legacy form. After the upgrade,
events whose body is already RFC 8785 are format 2 and the others stay format 1; no hash changed,
``audit verify`` accepts the old checkpoint and the log, today's code appends and checkpoints
after it, and the independent Node.js verifier checks both checkpoints and the consistency proof
between them. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from independent_verifier import node_verify
from interlock._internal.audit.anchored import verify_log
from interlock._internal.audit.canonical import canonical_json, legacy_canonical_json
from interlock._internal.audit.chain import GENESIS_HASH, append_event_tx, event_hash
from interlock._internal.audit.checkpoints import (
    CHECKPOINT_TYPE,
    CHECKPOINT_TYPE_V1,
    Checkpoint,
    Frontier,
    leaf_hash,
    stored_checkpoints,
    write_checkpoint,
)
from interlock._internal.audit.keys import AuditKey, trusted_keys
from interlock._internal.cli.audit import app
from interlock._internal.settings import AuditSettings, DatabaseSettings
from interlock._internal.store import migrate
from interlock._internal.store.engine import make_engine

SEED = "hash-format-upgrade-seed-0123456789"
BEFORE_0008 = "0011"  # the revision 0008 follows
# Data whose legacy form differs from RFC 8785 (index → why), and data whose forms agree.
LEGACY_ONLY = {
    1: {"amount": 120.0, "currency": "EUR"},  # legacy "120.0", RFC 8785 "120"
    3: {"ratio": 1e-05},  # legacy "1e-05", RFC 8785 "0.00001"
    4: {"\U0001f600 key": 1, "\uffff key": 2},  # code-point vs UTF-16 order of the keys
}
SAME = {0: {"ticket_id": "T-1001"}, 2: {"decision": "deny", "i": 2}, 5: {"n": 7, "ok": True}}
runner = CliRunner()


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(DatabaseSettings(url=db_url))
    yield eng
    eng.dispose()


def _write_legacy_log(engine: Engine, key: AuditKey) -> Checkpoint:
    """Six events and a v1 checkpoint (integral ts), as the code before hash format 2 stored them."""
    migrate.upgrade(engine, BEFORE_0008)
    prev = GENESIS_HASH
    frontier = Frontier()
    rows = []
    for i in range(6):
        data = LEGACY_ONLY.get(i) or SAME[i]
        record = {
            "seq": i + 1,
            "ts": 1_700_000_000.25 + i,
            "kind": "action.decided",
            "actor": "agent:bot",
            "workflow": "wf",
            "run_id": None,
            "data": data,
        }
        body = legacy_canonical_json(record).decode("utf-8")
        digest = event_hash(prev, body)
        rows.append({**record, "body": body, "prev_hash": prev, "hash": digest})
        frontier.append(leaf_hash(digest))
        prev = digest
    assert canonical_json(json.loads(rows[1]["body"])) != rows[1]["body"].encode()  # really legacy-only
    unsigned = Checkpoint(6, prev, frontier.root().hex(), 1_700_000_100.0, key.key_id, "", CHECKPOINT_TYPE_V1)
    signature = key.private.sign(legacy_canonical_json(unsigned.signed_body())).hex()
    checkpoint = Checkpoint(**{**unsigned.as_dict(), "signature": signature})
    with engine.begin() as conn:
        for row in rows:
            conn.execute(
                text(
                    "INSERT INTO audit_events (seq, ts, kind, actor, workflow, run_id, body, prev_hash, hash) "
                    "VALUES (:seq, :ts, :kind, :actor, :workflow, :run_id, :body, :prev_hash, :hash)"
                ),
                {k: v for k, v in row.items() if k != "data"},
            )
        conn.execute(text("DELETE FROM audit_head"))
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 6, :h)"), {"h": prev})
        conn.execute(
            text(
                "INSERT INTO audit_checkpoints (seq, key_id, ts, tip_hash, merkle_root, signature, frontier) "
                "VALUES (:seq, :key_id, :ts, :tip_hash, :merkle_root, :signature, :frontier)"
            ),
            {
                **{k: v for k, v in checkpoint.as_dict().items() if k != "type"},
                "frontier": json.dumps(frontier.to_hex()),
            },
        )
    return checkpoint


def _formats(engine: Engine) -> dict[int, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT seq, hash_format FROM audit_events ORDER BY seq")).all())


def test_0008_relabels_a_legacy_log_which_still_verifies(
    engine: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = AuditKey.from_seed(SEED)
    keys = trusted_keys(AuditSettings(signing_seed=SEED))
    old = _write_legacy_log(engine, key)
    with engine.connect() as conn:
        hashes_before = conn.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq")).all()

    migrate.upgrade(engine)

    assert _formats(engine) == {1: 2, 2: 1, 3: 2, 4: 1, 5: 1, 6: 2}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq, hash FROM audit_events ORDER BY seq")).all() == hashes_before
    [(stored, _frontier)] = stored_checkpoints(engine)
    assert stored == old
    assert stored.type == CHECKPOINT_TYPE_V1
    report = verify_log(engine, keys=keys)
    assert report.ok, report.message
    assert (report.events, report.checkpoints) == (6, 1)

    # Today's code appends after the legacy events and signs a v2 checkpoint extending the v1 one.
    for i in range(5):
        append_event_tx(engine, kind="action.decided", actor="agent:bot", data={"amount": 120.0, "i": i})
    new = write_checkpoint(engine, key)
    assert (new.seq, new.type) == (11, CHECKPOINT_TYPE)
    assert _formats(engine)[11] == 2
    report = verify_log(engine, keys=keys)
    assert report.ok, report.message
    assert report.checkpoints == 2

    # A verifier that shares no code with Interlock checks the old and the new checkpoint's
    # signatures (the v1 one over the legacy form) and that the new tree extends the old one.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)
    monkeypatch.setenv("INTERLOCK_AUDIT__SIGNING_SEED", SEED)
    proof = runner.invoke(app, ["consistency", "--from", "6", "--db", db_url, "--json"])
    assert proof.exit_code == 0, proof.output
    path = tmp_path / "consistency.json"
    path.write_text(proof.stdout)
    checked = node_verify(None, key.public_hex, "--consistency", str(path))
    assert checked["ok"], checked
    assert (checked["consistency"]["first"], checked["consistency"]["second"]) == (6, 11)


def test_a_legacy_event_relabelled_as_format_2_is_caught(engine: Engine) -> None:
    """The label is not hashed; claiming RFC 8785 for a body that is not in it is an alteration."""
    key = AuditKey.from_seed(SEED)
    _write_legacy_log(engine, key)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET hash_format = 2 WHERE seq = 2"))
    report = verify_log(engine, keys=trusted_keys(AuditSettings(signing_seed=SEED)))
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 2, "altered")
    assert "hash format 2" in report.message
