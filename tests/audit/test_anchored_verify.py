"""Attacks by someone with write access to the database, which a hash chain alone cannot see.

Each test rewrites the tables the way such an attacker would (rehashing everything after an edit,
moving the chain tip) and shows that ``audit verify`` catches it through the signed checkpoints,
the witness outside the database, or the approvals' own events. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.audit.anchored import verify_log, verify_with_settings
from interlock._internal.audit.canonical import canonical_json
from interlock._internal.audit.chain import append_event_tx, event_hash
from interlock._internal.audit.checkpoints import verify_consistency, write_checkpoint
from interlock._internal.audit.keys import AuditKey, trusted_keys
from interlock._internal.audit.verify import verify_chain
from interlock._internal.audit.witness import DirectoryWitness, HttpWitness, load_record
from interlock._internal.cli.audit import app
from interlock._internal.settings import AuditSettings, DatabaseSettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade
from interlock.exceptions import AuditIntegrityError

SEED = "anchored-verify-test-seed-0123456789"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)
    monkeypatch.setenv("INTERLOCK_AUDIT__SIGNING_SEED", SEED)


@pytest.fixture
def key() -> AuditKey:
    return AuditKey.from_seed(SEED)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


def _decisions(engine: Engine, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        append_event_tx(
            engine,
            kind="action.decided",
            actor="agent:bot",
            data={"i": i, "decision": "deny" if i == 2 else "allow"},
        )


def _keys() -> dict[str, Any]:
    return trusted_keys(AuditSettings(signing_seed=SEED))


def rehash_from(engine: Engine, seq: int, edit: Any = None, *, delete_after: int | None = None) -> None:
    """Edit event ``seq`` (via ``edit(body_dict)``), recompute every later hash and move the tip."""
    with engine.begin() as conn:
        if delete_after is not None:
            conn.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": delete_after})
        rows = conn.execute(
            text("SELECT seq, body, prev_hash FROM audit_events WHERE seq >= :s ORDER BY seq"), {"s": seq}
        ).all()
        prev = rows[0].prev_hash if rows else None
        for row in rows:
            body = json.loads(row.body)
            if row.seq == seq and edit is not None:
                edit(body)
            new_body = canonical_json(body).decode()
            digest = event_hash(prev, new_body)
            conn.execute(
                text("UPDATE audit_events SET body = :b, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"b": new_body, "p": prev, "h": digest, "s": row.seq},
            )
            prev = digest
        last = conn.execute(text("SELECT MAX(seq) FROM audit_events")).scalar()
        tip = conn.execute(text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": last}).scalar()
        conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": last, "h": tip})


def _allow(body: dict[str, Any]) -> None:
    body["data"]["decision"] = "allow"


def test_a_rehashed_rewrite_under_a_checkpoint_is_caught_and_located(engine: Engine, key: AuditKey) -> None:
    _decisions(engine, 4)
    write_checkpoint(engine, key)
    _decisions(engine, 9, start=4)
    write_checkpoint(engine, key)  # 13 events: subtrees 1-8, 9-12, 13
    _decisions(engine, 3, start=13)
    assert verify_log(engine, keys=_keys()).ok
    rehash_from(engine, 3, _allow)  # event 3 recorded the deny
    assert verify_chain(engine).ok  # what `audit verify` said before: the chain alone is consistent
    report = verify_log(engine, keys=_keys())
    assert not report.ok
    assert report.checkpoint == 4
    assert report.first_bad_seq == 1  # no earlier checkpoint: anything from 1 to 4
    assert "checkpoint 4" in report.message
    # The same edit after the first checkpoint is located between the checkpoints, in one subtree.
    rehash_from(engine, 3, lambda b: b["data"].update(decision="deny"))
    assert verify_log(engine, keys=_keys()).ok
    rehash_from(engine, 10, lambda b: b["data"].update(decision="deny"))
    report = verify_log(engine, keys=_keys())
    assert (report.ok, report.checkpoint, report.first_bad_seq) == (False, 13, 9)


def test_checkpoint_command_rechecks_even_when_the_tip_has_not_moved(db_url: str, engine: Engine) -> None:
    _decisions(engine, 5)
    assert runner.invoke(app, ["checkpoint", "--db", db_url]).exit_code == 0
    rehash_from(engine, 3, _allow)
    result = runner.invoke(app, ["checkpoint", "--db", db_url])
    assert result.exit_code == 1
    assert "checkpoint 5" in result.output
    assert "no checkpoint signed" in result.output
    result = runner.invoke(app, ["verify", "--db", db_url, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["checkpoint"] == 5


def test_truncation_under_a_checkpoint_is_caught(engine: Engine, key: AuditKey) -> None:
    _decisions(engine, 8)
    write_checkpoint(engine, key)
    rehash_from(engine, 6, delete_after=5)  # drop events 6-8 and move the tip back to 5
    assert verify_chain(engine).ok
    report = verify_log(engine, keys=_keys())
    assert (report.ok, report.problem, report.first_bad_seq, report.checkpoint) == (False, "deleted", 6, 8)
    assert "events 6 to 8 were removed" in report.message
    with pytest.raises(AuditIntegrityError, match="events were removed"):
        write_checkpoint(engine, key)


def test_an_edited_checkpoint_or_a_foreign_key_is_caught(engine: Engine, key: AuditKey) -> None:
    _decisions(engine, 5)
    write_checkpoint(engine, key)
    with engine.begin() as conn:
        conn.execute(update(t.audit_checkpoints).values(merkle_root="ab" * 32))
    report = verify_log(engine, keys=_keys())
    assert (report.ok, report.checkpoint) == (False, 5)
    assert "signature" in report.message
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
    mallory = AuditKey.from_seed("mallory's own key")
    write_checkpoint(engine, mallory)
    report = verify_log(engine, keys=_keys())
    assert not report.ok
    assert "neither the audit key nor a retired key" in report.message
    # A retired key listed in settings is trusted for the checkpoints it signed.
    settings = AuditSettings(signing_seed=SEED, retired_public_keys=[mallory.public_hex])
    assert verify_with_settings(engine, settings).ok


def test_a_witness_catches_a_full_rewrite_by_someone_holding_only_the_database(
    engine: Engine, key: AuditKey, tmp_path: Path
) -> None:
    witness = DirectoryWitness(tmp_path / "witness")
    settings = AuditSettings(signing_seed=SEED, witness_dir=tmp_path / "witness")
    _decisions(engine, 6)
    write_checkpoint(engine, key, witnesses=[witness])
    _decisions(engine, 3, start=6)
    write_checkpoint(engine, key, witnesses=[witness])
    assert [r.checkpoint.seq for r in witness.records()] == [6, 9]
    assert verify_with_settings(engine, settings).ok
    # The attacker rewrites event 3, rehashes, and removes every checkpoint from the database.
    rehash_from(engine, 3, _allow)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
    assert verify_log(engine, keys=_keys()).ok  # nothing in the database disagrees any more
    report = verify_with_settings(engine, settings)
    assert (report.ok, report.checkpoint) == (False, 6)
    assert "witness directory" in report.message or "checkpoint-" in report.message
    # And the server will not sign the rewritten history: it extends the witness's checkpoint.
    with pytest.raises(AuditIntegrityError):
        write_checkpoint(engine, key, witnesses=[witness])
    # A witness never takes a second, different checkpoint for a seq it holds (a fork).
    files = sorted((tmp_path / "witness").iterdir())
    assert len(files) == 2


def test_trusted_checkpoint_file_and_consistency_proof(
    db_url: str, engine: Engine, key: AuditKey, tmp_path: Path
) -> None:
    _decisions(engine, 7)
    result = runner.invoke(app, ["checkpoint", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    kept = tmp_path / "kept-elsewhere.json"
    kept.write_text(result.stdout)
    _decisions(engine, 6, start=7)
    assert runner.invoke(app, ["checkpoint", "--db", db_url]).exit_code == 0
    ok = runner.invoke(app, ["verify", "--db", db_url, "--trusted-checkpoint", str(kept)])
    assert ok.exit_code == 0, ok.output
    proof = runner.invoke(app, ["consistency", "--from", "7", "--db", db_url, "--json"])
    assert proof.exit_code == 0, proof.output
    body = json.loads(proof.stdout)
    assert body["ok"]
    assert body["second"]["seq"] == 13
    assert body["consistency"]
    # Rewrite everything, checkpoints included: only the kept file still knows the old history.
    rehash_from(engine, 3, _allow)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
    assert runner.invoke(app, ["checkpoint", "--db", db_url]).exit_code == 0
    assert runner.invoke(app, ["verify", "--db", db_url]).exit_code == 0
    bad = runner.invoke(app, ["verify", "--db", db_url, "--trusted-checkpoint", str(kept)])
    assert bad.exit_code == 1
    assert "checkpoint 7" in bad.output


class _Collector(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_http_witness_gets_each_checkpoint_with_a_consistency_proof(engine: Engine, key: AuditKey) -> None:
    _Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        witness = HttpWitness(f"http://127.0.0.1:{server.server_port}/checkpoints")
        _decisions(engine, 5)
        write_checkpoint(engine, key, witnesses=[witness])
        _decisions(engine, 6, start=5)
        write_checkpoint(engine, key, witnesses=[witness])
    finally:
        server.shutdown()
        server.server_close()
    first, second = (load_record_from(r) for r in _Collector.received)
    assert first.previous is None
    link = second.previous
    assert link is not None
    assert link["seq"] == 5
    assert verify_consistency(
        5,
        11,
        bytes.fromhex(first.checkpoint.merkle_root),
        bytes.fromhex(second.checkpoint.merkle_root),
        [bytes.fromhex(h) for h in link["consistency"]],
    )
    assert second.checkpoint.verify(key.public)


def load_record_from(data: dict[str, Any]) -> Any:
    from interlock._internal.audit.witness import parse_record

    return parse_record(data, source="http")


# ---- approvals are evidence ---------------------------------------------------------------------------

REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


def _decided_approval(harness: Harness) -> str:
    alice, _ = harness.il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    run = harness.run()
    pending = harness.act(run, "payments.refund", REFUND, idempotency_key="r-1")
    harness.il.approvals.decide(pending.approval_id, operator=alice.principal(), approve=True, comment="ok")
    return str(pending.approval_id)


@pytest.mark.parametrize(
    "forge",
    [
        "UPDATE approvals SET decided_by = '[\"mallory\"]'",
        "UPDATE approval_votes SET operator_id = 'mallory'",
        "UPDATE approval_votes SET comment = 'looks fine'",
        "UPDATE approvals SET state = 'rejected'",
    ],
)
def test_a_forged_approver_or_vote_is_caught(db_url: str, forge: str) -> None:
    harness = Harness(db_url, audit={"signing_seed": SEED})
    try:
        approval = _decided_approval(harness)
        assert harness.il.verify_audit().ok
        with harness.il.engine.begin() as conn:
            conn.execute(text(forge))
        report = harness.il.verify_audit()
        assert not report.ok
        assert f"approval {approval}" in report.message
        assert report.first_bad_seq is not None
    finally:
        harness.close()


def test_verify_names_a_missing_vote(db_url: str) -> None:
    harness = Harness(db_url, audit={"signing_seed": SEED})
    try:
        approval = _decided_approval(harness)
        with harness.il.engine.begin() as conn:
            conn.execute(t.approval_votes.delete())
            assert conn.execute(select(t.approvals.c.state)).scalar() == "approved"
        report = harness.il.verify_audit()
        assert "the vote by 'alice' its events record is missing" in report.message
        assert approval in report.message
    finally:
        harness.close()


def test_a_witness_file_is_read_back(tmp_path: Path, engine: Engine, key: AuditKey) -> None:
    witness = DirectoryWitness(tmp_path / "w")
    _decisions(engine, 3)
    cp = write_checkpoint(engine, key, witnesses=[witness])
    record = load_record(witness.file_for(cp))
    assert record.checkpoint == cp
    assert record.frontier
