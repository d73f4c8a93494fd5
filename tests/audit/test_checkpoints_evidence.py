"""Signed checkpoints, the Merkle tree behind them, and evidence bundles verified offline."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text, update
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.audit.chain import append_event_tx
from interlock._internal.audit.checkpoints import (
    Checkpoint,
    Frontier,
    MerkleTree,
    latest_checkpoint,
    leaf_hash,
    maybe_checkpoint,
    node_hash,
    sign_checkpoint,
    verify_inclusion,
    write_checkpoint,
)
from interlock._internal.audit.evidence import bundle_bytes, export_bundle, verify_bundle
from interlock._internal.audit.keys import AuditKey, load_public_key
from interlock._internal.audit.verify import verify_chain
from interlock._internal.cli.audit import app
from interlock._internal.identity.tokens import TokenService
from interlock._internal.settings import DatabaseSettings, IdentitySettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade
from interlock.exceptions import AuditIntegrityError, ConfigError, NotFound

runner = CliRunner()
SEED = "checkpoint-test-seed-0123456789abcdef"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)
    monkeypatch.setenv("INTERLOCK_AUDIT__SIGNING_SEED", SEED)


@pytest.fixture
def key() -> AuditKey:
    return AuditKey.from_seed(SEED)


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    eng = make_engine(DatabaseSettings(url=db_url))
    upgrade(eng)
    yield eng
    eng.dispose()


def _events(engine: Any, n: int, start: int = 0) -> list[str]:
    return [append_event_tx(engine, kind="k", actor="a", data={"i": i}).hash for i in range(start, start + n)]


# ---- the Merkle tree against RFC 6962's own recursive definition -----------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


@pytest.mark.parametrize("size", [*range(1, 34), 64, 100])
def test_tree_root_and_proofs_match_rfc6962(size: int) -> None:
    leaves = [leaf_hash(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(size)]
    tree = MerkleTree(leaves)
    frontier = Frontier()
    for leaf in leaves:
        frontier.append(leaf)
    assert tree.root() == frontier.root() == _mth(leaves)
    for m in range(size):
        proof = tree.proof(m)
        assert proof == _path(m, leaves)
        assert len(proof) <= size.bit_length()
        assert verify_inclusion(leaves[m], m, size, proof, tree.root())
        # The same proof proves nothing for another leaf, place or tree size.
        assert not verify_inclusion(leaves[(m + 1) % size], m, size, proof, tree.root()) or size == 1
        assert not verify_inclusion(leaves[m], m, size, proof, _mth(leaves[:-1]))
        if proof:
            assert not verify_inclusion(leaves[m], m ^ 1, size, proof, tree.root()) or (m ^ 1) >= size
            bent = [bytes(32), *proof[1:]]
            assert not verify_inclusion(leaves[m], m, size, bent, tree.root())


def test_leaves_and_nodes_are_domain_separated() -> None:
    a, b = leaf_hash("11" * 32), leaf_hash("22" * 32)
    assert leaf_hash("11" * 32) == hashlib.sha256(b"\x00" + bytes.fromhex("11" * 32)).digest()
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # A two-leaf tree's root cannot be passed off as a leaf of a one-leaf tree.
    assert not verify_inclusion(node_hash(a, b), 0, 1, [], leaf_hash(node_hash(a, b).hex()))


def test_frontier_round_trips_and_rejects_wrong_shapes() -> None:
    frontier = Frontier()
    for i in range(11):
        frontier.append(leaf_hash(f"{i:064x}"))
    again = Frontier.from_hex(11, frontier.to_hex())
    assert again.root() == frontier.root()
    with pytest.raises(ValueError, match="subtree roots"):
        Frontier.from_hex(12, frontier.to_hex())


# ---- keys --------------------------------------------------------------------------------------------


def test_audit_key_is_not_the_token_key_for_the_same_seed(key: AuditKey) -> None:
    tokens = TokenService(IdentitySettings(signing_seed=SEED))
    assert key.public_hex != tokens.public_key.public_bytes_raw().hex()
    assert AuditKey.from_seed(SEED).public_hex == key.public_hex  # every replica derives the same key
    assert load_public_key(key.public_hex).public_bytes_raw() == key.public.public_bytes_raw()
    assert load_public_key(key.public_pem).public_bytes_raw() == key.public.public_bytes_raw()
    with pytest.raises(ConfigError):
        load_public_key("not a key")


def test_public_key_command() -> None:
    result = runner.invoke(app, ["public-key"])
    assert result.exit_code == 0, result.output
    key = AuditKey.from_seed(SEED)
    assert key.public_pem in result.output
    assert f"ed25519 {key.public_hex}" in result.output
    data = json.loads(runner.invoke(app, ["public-key", "--json"]).stdout)
    assert data == {"key_id": key.key_id, "ed25519": key.public_hex, "pem": key.public_pem}


# ---- checkpoints --------------------------------------------------------------------------------------


def test_checkpoint_signs_tip_and_merkle_root(engine: Any, key: AuditKey) -> None:
    with pytest.raises(NotFound) as empty:
        write_checkpoint(engine, key)
    assert empty.value.code == "audit_empty"
    hashes = _events(engine, 5)
    cp = write_checkpoint(engine, key, now=1000.0)
    assert (cp.seq, cp.tip_hash, cp.ts, cp.key_id) == (5, hashes[-1], 1000.0, key.key_id)
    assert cp.merkle_root == MerkleTree(leaf_hash(h) for h in hashes).root().hex()
    assert cp.verify(key.public)
    assert not cp.verify(AuditKey.from_seed("another seed").public)
    # Nothing new: the same checkpoint comes back; new events extend the stored frontier.
    assert write_checkpoint(engine, key) == cp
    hashes += _events(engine, 6, start=5)
    cp2 = write_checkpoint(engine, key)
    assert cp2.seq == 11
    assert cp2.merkle_root == MerkleTree(leaf_hash(h) for h in hashes).root().hex()
    assert latest_checkpoint(engine) == cp2
    # A fresh key (rotation) reads the whole log again and agrees on the root.
    other = AuditKey.from_seed("rotated seed")
    assert write_checkpoint(engine, other).merkle_root == cp2.merkle_root


_REWRITE = text("UPDATE audit_events SET body = REPLACE(body, :old, :new) WHERE seq = 6")


def test_checkpoint_refuses_a_tampered_log_or_checkpoint(engine: Any, key: AuditKey) -> None:
    _events(engine, 4)
    write_checkpoint(engine, key)
    _events(engine, 2, start=4)
    with engine.begin() as conn:
        conn.execute(_REWRITE, {"old": '"i":5', "new": '"i":9'})
    with pytest.raises(AuditIntegrityError, match="event 6 does not match its hash"):
        write_checkpoint(engine, key)
    with engine.begin() as conn:
        conn.execute(_REWRITE, {"old": '"i":9', "new": '"i":5'})
        conn.execute(update(t.audit_checkpoints).values(merkle_root="00" * 32))
    with pytest.raises(AuditIntegrityError, match="checkpoint 4 does not verify"):
        write_checkpoint(engine, key)


def test_maybe_checkpoint_by_count_and_by_time(engine: Any, key: AuditKey) -> None:
    assert maybe_checkpoint(engine, key, every_events=3, every_s=100, now=1000.0) is None  # empty log
    _events(engine, 1)
    first = maybe_checkpoint(engine, key, every_events=3, every_s=100, now=1000.0)
    assert first is not None
    assert first.seq == 1
    _events(engine, 1)
    assert maybe_checkpoint(engine, key, every_events=3, every_s=100, now=1050.0) is None
    assert maybe_checkpoint(engine, key, every_events=3, every_s=100, now=1100.0).seq == 2  # type: ignore[union-attr]
    _events(engine, 3)
    assert maybe_checkpoint(engine, key, every_events=3, every_s=100, now=1101.0).seq == 5  # type: ignore[union-attr]
    assert maybe_checkpoint(engine, key, every_events=3, every_s=100, now=9999.0) is None  # nothing new


def test_checkpoint_command(db_url: str) -> None:
    assert runner.invoke(app, ["checkpoint", "--db", db_url]).exit_code == 1  # no database yet
    eng = make_engine(DatabaseSettings(url=db_url))
    try:
        upgrade(eng)
    finally:
        eng.dispose()
    result = runner.invoke(app, ["checkpoint", "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "no checkpoint written" in result.output
    eng = make_engine(DatabaseSettings(url=db_url))
    try:
        _events(eng, 3)
    finally:
        eng.dispose()
    result = runner.invoke(app, ["checkpoint", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    cp = json.loads(result.stdout)["checkpoint"]
    assert (cp["seq"], cp["key_id"]) == (3, AuditKey.from_seed(SEED).key_id)


# ---- evidence bundles -------------------------------------------------------------------------------


def _busy_run(harness: Harness) -> str:
    run = harness.run()
    assert harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"
    assert harness.act(run, "tickets.get", {"ticket_id": "T-9999"}).status == "failed"
    assert harness.act(run, "customers.delete", {"customer_id": "C-1001"}).status == "denied"
    refund = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
    assert harness.act(run, "payments.refund", refund).status == "pending_approval"
    harness.il.runs.finish(run, state="completed", reason=None, actor="test")
    return run


def test_export_and_verify_on_both_engines(db_url: str, tmp_path: Path) -> None:
    harness = Harness(db_url, audit={"signing_seed": SEED})
    try:
        run = _busy_run(harness)
        other = harness.run()  # events of another run interleave with nothing in the bundle
        harness.act(other, "tickets.get", {"ticket_id": "T-1002"})
    finally:
        harness.close()
    out = tmp_path / "evidence" / "bundle.json"
    result = runner.invoke(app, ["export", "--run", run, "--out", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text())
    assert [s["status"] for s in bundle["steps"]] == ["executed", "failed", "denied", "pending_approval"]
    assert (len(bundle["approvals"]), len(bundle["decisions"])) == (1, 4)
    kinds = [json.loads(e["body"])["kind"] for e in bundle["events"]]
    assert (kinds[0], kinds[-1]) == ("run.started", "run.completed")
    assert bundle["checkpoint"]["seq"] >= bundle["events"][-1]["seq"]
    assert bundle["workflow_versions"][0]["cedar_schema"] is not None
    key = AuditKey.from_seed(SEED)
    result = runner.invoke(app, ["verify-bundle", str(out), "--public-key", key.public_hex])
    assert result.exit_code == 0, result.output
    assert "bundle verified" in result.output
    # The key may also be given as a PEM file; a second export reuses the checkpoint.
    pem = tmp_path / "audit.pem"
    pem.write_text(key.public_pem)
    assert runner.invoke(app, ["verify-bundle", str(out), "--public-key", str(pem)]).exit_code == 0
    eng = make_engine(DatabaseSettings(url=db_url))
    try:
        again = export_bundle(eng, run, key)
        assert again["checkpoint"] == bundle["checkpoint"]
        with pytest.raises(NotFound):
            export_bundle(eng, "run_missing", key)
        assert verify_chain(eng).ok
    finally:
        eng.dispose()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], AuditKey]:
    """One real bundle (SQLite) for the tamper cases; verifying it needs no database."""
    folder = tmp_path_factory.mktemp("bundle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPPORT_DESK_DB", str(folder / "desk.db"))
        harness = Harness(f"sqlite:///{folder / 'il.db'}", audit={"signing_seed": SEED})
        try:
            run = _busy_run(harness)
            key = AuditKey.from_seed(SEED)
            bundle = export_bundle(harness.il.engine, run, key)
        finally:
            harness.close()
    return bundle, key


def _resign(bundle: dict[str, Any], key: AuditKey) -> dict[str, Any]:
    body = {k: v for k, v in bundle.items() if k != "signature"}
    return {**body, "signature": key.sign(body)}


def _step(b: dict[str, Any], status: str) -> dict[str, Any]:
    return next(s for s in b["steps"] if s["status"] == status)


def _edit_argument(b: dict[str, Any]) -> None:
    _step(b, "executed")["arguments"]["ticket_id"] = "T-1002"


def _edit_decision(b: dict[str, Any]) -> None:
    denied = _step(b, "denied")["id"]
    next(d for d in b["decisions"] if d["id"] == denied)["decision"] = "allow"


def _edit_event_body(b: dict[str, Any]) -> None:
    event = b["events"][1]
    event["body"] = event["body"].replace('"tickets.get"', '"tickets.search"')


def _drop_event(b: dict[str, Any]) -> None:
    denied = _step(b, "denied")["id"]
    b["events"] = [e for e in b["events"] if denied not in e["body"]]


def _alter_checkpoint(b: dict[str, Any]) -> None:
    b["checkpoint"]["merkle_root"] = hashlib.sha256(b"forged").hexdigest()


def _edit_result(b: dict[str, Any]) -> None:
    _step(b, "executed")["result"]["subject"] = "nothing to see"


def _edit_manifest(b: dict[str, Any]) -> None:
    b["workflow_versions"][0]["manifest"] = b["workflow_versions"][0]["manifest"].replace("500", "5000")


def _edit_policy(b: dict[str, Any]) -> None:
    b["workflow_versions"][0]["cedar_policies"] += "\npermit(principal, action, resource);\n"


def _edit_proof(b: dict[str, Any]) -> None:
    b["events"][0]["proof"][0] = "00" * 32


TAMPERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "argument": (_edit_argument, "arguments do not hash to the recorded argument hash"),
    "decision": (_edit_decision, "decision differs from its audit event"),
    "event body": (_edit_event_body, "hash does not match its body"),
    "dropped event": (_drop_event, "no audit event records it"),
    "checkpoint": (_alter_checkpoint, "checkpoint"),
    "result": (_edit_result, "result does not hash to its audit event's result hash"),
    "manifest": (_edit_manifest, "manifest text does not hash to the version"),
    "policy": (_edit_policy, "Cedar policy text does not hash to the version"),
    "proof": (_edit_proof, "inclusion proof does not lead to the checkpoint's Merkle root"),
}


def test_the_untouched_bundle_verifies(exported: tuple[dict[str, Any], AuditKey]) -> None:
    bundle, key = exported
    report = verify_bundle(json.loads(bundle_bytes(bundle)), key.public)
    assert report.ok, report.problems
    assert report.warnings == []
    assert (
        report.events == len(bundle["events"]) == 9
    )  # started, 4 actions, 2 executions, approval, completed


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampered_bundle_is_rejected(
    exported: tuple[dict[str, Any], AuditKey], case: str, tmp_path: Path
) -> None:
    bundle, key = exported
    tamper, inner = TAMPERS[case]
    forged = copy.deepcopy(bundle)
    tamper(forged)
    path = tmp_path / "forged.json"
    path.write_bytes(bundle_bytes(forged))
    result = runner.invoke(app, ["verify-bundle", str(path), "--public-key", key.public_hex])
    assert result.exit_code == 1, result.output
    assert "bundle NOT verified" in result.output
    assert "bundle signature does not verify" in result.output
    # Even signed again with the genuine key (an insider, or a bug), the contents give it away.
    report = verify_bundle(_resign(forged, key), key.public)
    assert not report.ok
    assert any(inner in p for p in report.problems), report.problems
    assert not any("bundle signature" in p for p in report.problems)


def test_swapped_public_key_is_rejected(exported: tuple[dict[str, Any], AuditKey], tmp_path: Path) -> None:
    bundle, key = exported
    mallory = AuditKey(Ed25519PrivateKey.generate())
    forged = copy.deepcopy(bundle)
    forged["public_key"] = {"key_id": mallory.key_id, "ed25519": mallory.public_hex}
    cp = forged["checkpoint"]
    resigned_cp = sign_checkpoint(
        mallory, seq=cp["seq"], tip_hash=cp["tip_hash"], merkle_root=cp["merkle_root"], ts=cp["ts"]
    )
    forged["checkpoint"] = resigned_cp.as_dict()
    forged = _resign(forged, mallory)
    # Self-consistent under Mallory's key, which is exactly why the verifier brings its own.
    assert verify_bundle(forged, mallory.public).ok
    assert Checkpoint.from_dict(forged["checkpoint"]).verify(mallory.public)
    path = tmp_path / "forged.json"
    path.write_bytes(bundle_bytes(forged))
    result = runner.invoke(app, ["verify-bundle", str(path), "--public-key", key.public_hex, "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert "the public key in the bundle is not the trusted key" in problems
    assert "bundle signature does not verify with the trusted key" in problems
    assert any(p.startswith("checkpoint") for p in problems)
    # The genuine bundle checked against the wrong key fails as well.
    genuine = tmp_path / "genuine.json"
    genuine.write_bytes(bundle_bytes(bundle))
    assert (
        runner.invoke(app, ["verify-bundle", str(genuine), "--public-key", mallory.public_hex]).exit_code == 1
    )


def test_malformed_bundles_fail_cleanly(exported: tuple[dict[str, Any], AuditKey], tmp_path: Path) -> None:
    bundle, key = exported
    assert not verify_bundle([], key.public).ok
    broken = copy.deepcopy(bundle)
    del broken["events"]
    report = verify_bundle(broken, key.public)
    assert not report.ok
    assert any("malformed" in p for p in report.problems)
    path = tmp_path / "not.json"
    path.write_text("{")
    result = runner.invoke(app, ["verify-bundle", str(path), "--public-key", key.public_hex])
    assert result.exit_code == 1
    assert "not JSON" in result.output


def test_export_refuses_a_log_that_no_longer_matches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'il.db'}"
    harness = Harness(url, audit={"signing_seed": SEED})
    try:
        run = harness.run()
        harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
        key = AuditKey.from_seed(SEED)
        export_bundle(harness.il.engine, run, key)
        with harness.il.engine.begin() as conn:
            conn.execute(
                update(t.audit_events)
                .where(t.audit_events.c.seq == 1)
                .values(hash=hashlib.sha256(b"x").hexdigest())
            )
        with pytest.raises(AuditIntegrityError):
            export_bundle(harness.il.engine, run, key)
    finally:
        harness.close()
