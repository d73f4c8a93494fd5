"""An evidence bundle verified by a verifier that shares no code with Interlock.

``node_verifier/verify.mjs`` was written from docs/audit-format.md with nothing but Node's standard
library (``node:crypto``). It must accept a bundle exported from a real run, on SQLite and on
PostgreSQL, and reject tampered ones: an edited decision, a forged approver (in the file, or in the
database before a properly signed export), a forged work package. Interlock's own ``verify-bundle``
must agree with it on each.

Node.js is needed; without it these tests are skipped, unless ``INTERLOCK_REQUIRE_NODE=1`` (as CI
sets), which makes that a failure (see ``tests/independent_verifier.py``).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from conftest import Harness
from independent_verifier import need_node, node_verify
from interlock._internal.audit.evidence import bundle_bytes, verify_bundle
from interlock._internal.audit.keys import AuditKey
from interlock._internal.cli.audit import app
from interlock._internal.packages.models import PackageRequest
from interlock._internal.packages.signing import PackageKey

AUDIT_SEED = "node-verifier-audit-seed-0123456789"
PACKAGE_SEED = "node-verifier-package-seed-0123456789"
runner = CliRunner()


@dataclass
class Exported:
    db_url: str
    run: str
    path: Path
    bundle: dict[str, Any]
    key: AuditKey
    package_key: PackageKey
    consistency: Path


REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


def _export(db_url: str, run: str, out: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["export", "--run", run, "--out", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    bundle: dict[str, Any] = json.loads(out.read_text())
    return bundle


@pytest.fixture
def exported(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Exported:
    """A run started with a signed work package: a read, a forbidden delete, a refund approved by
    an approver and executed, the run finished; exported by the CLI, with a consistency proof
    between two checkpoints."""
    need_node()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("INTERLOCK_DATABASE__URL", raising=False)
    monkeypatch.setenv("INTERLOCK_AUDIT__SIGNING_SEED", AUDIT_SEED)
    monkeypatch.setenv("INTERLOCK_PACKAGES__SIGNING_SEED", PACKAGE_SEED)
    harness = Harness(db_url, audit={"signing_seed": AUDIT_SEED}, packages={"signing_seed": PACKAGE_SEED})
    try:
        il = harness.il
        alice, _ = il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
        request = PackageRequest.model_validate(
            {
                "workflow": harness.workflow,
                "agent": "triage-bot",
                "task": "refund T-1003",
                "tools": {
                    "tickets.get": {},
                    "customers.delete": {},
                    "payments.refund": {"max_calls": 2, "arguments": {"amount": {"max": 200}}},
                },
            }
        )
        package = il.packages.issue(request, actor="operator:ci")
        run = il.start_run(harness.tokens["triage-bot"], package=package.token).id
        assert harness.act(run, "tickets.get", {"ticket_id": "T-1003"}).status == "executed"
        assert harness.act(run, "customers.delete", {"customer_id": "C-1001"}).status == "denied"
        pending = harness.act(run, "payments.refund", REFUND, idempotency_key="refund-1")
        assert pending.status == "pending_approval"
        il.approvals.decide(pending.approval_id, operator=alice.principal(), approve=True, comment="fine")
        il.finish_run(harness.tokens["triage-bot"], run)
        assert il.verify_audit().ok
        first = runner.invoke(app, ["checkpoint", "--db", db_url, "--json"])
        assert first.exit_code == 0, first.output
        first_seq = json.loads(first.stdout)["checkpoint"]["seq"]
        other = harness.run()  # more history after the first checkpoint, from another run
        harness.act(other, "tickets.get", {"ticket_id": "T-1001"})
    finally:
        harness.close()
    assert runner.invoke(app, ["checkpoint", "--db", db_url]).exit_code == 0
    out = tmp_path / "bundle.json"
    bundle = _export(db_url, run, out)
    proof = runner.invoke(app, ["consistency", "--from", str(first_seq), "--db", db_url, "--json"])
    assert proof.exit_code == 0, proof.output
    consistency = tmp_path / "consistency.json"
    consistency.write_text(proof.stdout)
    return Exported(
        db_url,
        run,
        out,
        bundle,
        AuditKey.from_seed(AUDIT_SEED),
        PackageKey.from_seed(PACKAGE_SEED),
        consistency,
    )


def _write(tmp_path: Path, bundle: dict[str, Any], name: str = "forged.json") -> Path:
    path = tmp_path / name
    path.write_bytes(bundle_bytes(bundle))
    return path


def _resign(bundle: dict[str, Any], key: AuditKey) -> dict[str, Any]:
    body = {k: v for k, v in bundle.items() if k != "signature"}
    return {**body, "signature": key.sign(body)}


def test_node_verifies_a_real_bundle_and_the_consistency_proof(exported: Exported) -> None:
    key_hex = exported.key.public_hex
    package_hex = exported.package_key.public.public_bytes_raw().hex()
    report = node_verify(
        exported.path, key_hex, "--package-key", package_hex, "--consistency", str(exported.consistency)
    )
    assert report["ok"], report["problems"]
    assert report["warnings"] == []
    assert report["consistency"]["ok"]
    assert report["consistency"]["second"] > report["consistency"]["first"]
    # The same verdict, event count and checkpoint as Interlock's own verifier.
    ours = verify_bundle(exported.bundle, exported.key.public, package_key=exported.package_key.public)
    assert ours.ok, ours.problems
    assert ours.warnings == []
    assert (report["events"], report["checkpoint_seq"]) == (ours.events, ours.checkpoint_seq)
    kinds = [json.loads(e["body"])["kind"] for e in exported.bundle["events"]]
    assert {
        "run.started",
        "action.denied",
        "approval.requested",
        "approval.approved",
        "run.completed",
    } <= set(kinds)
    assert exported.bundle["package"]["public_key"]["key_id"] == exported.package_key.key_id
    # The wrong trusted key fails everything it signs.
    stranger = AuditKey.from_seed("someone else's seed")
    wrong = node_verify(exported.path, stranger.public_hex)
    assert "bundle signature does not verify with the trusted key" in wrong["problems"]
    assert "the public key in the bundle is not the trusted key" in wrong["problems"]


def _edit_decision(b: dict[str, Any]) -> None:
    denied = next(d for d in b["decisions"] if d["decision"] == "deny")
    denied["decision"] = "allow"


def _forge_approver(b: dict[str, Any]) -> None:
    b["approvals"][0]["decided_by"] = ["mallory"]
    b["approval_votes"][0]["operator_id"] = "mallory"


def _forge_package(b: dict[str, Any]) -> None:
    header, payload, signature = b["package"]["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tools"]["payments.refund"]["arguments"]["amount"]["max"] = 100000
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    b["package"]["token"] = f"{header}.{forged}.{signature}"
    b["package"]["claims"] = claims


TAMPERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "edited decision": (_edit_decision, "decision differs from its audit event"),
    "forged approver": (_forge_approver, 'decided_by reads ["mallory"] but its events say ["alice"]'),
    "forged package": (_forge_package, "the token's signature does not verify with the package key"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_node_rejects_a_tampered_bundle(exported: Exported, case: str, tmp_path: Path) -> None:
    tamper, reason = TAMPERS[case]
    forged = copy.deepcopy(exported.bundle)
    tamper(forged)
    key_hex = exported.key.public_hex
    report = node_verify(_write(tmp_path, forged), key_hex)
    assert not report["ok"]
    assert "bundle signature does not verify with the trusted key" in report["problems"]
    assert any(reason in p for p in report["problems"]), report["problems"]
    # Signed again with the genuine audit key (an insider), only the contents give it away.
    resigned = _resign(forged, exported.key)
    report = node_verify(_write(tmp_path, resigned, "resigned.json"), key_hex)
    assert not report["ok"]
    assert not any("bundle signature" in p for p in report["problems"]), report["problems"]
    assert any(reason in p for p in report["problems"]), report["problems"]
    ours = verify_bundle(resigned, exported.key.public)
    assert not ours.ok
    assert any(reason.replace('"', "'") in p or reason in p for p in ours.problems), ours.problems


def test_a_forged_approver_in_the_database_fails_a_freshly_signed_bundle(
    exported: Exported, tmp_path: Path
) -> None:
    """The attack from the issue: edit who approved in the tables, then export a bundle signed
    with the real audit key. Both verifiers and `audit verify` catch it."""
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine

    engine = make_engine(DatabaseSettings(url=exported.db_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE approvals SET decided_by = '[\"mallory\"]'"))
            conn.execute(text("UPDATE approval_votes SET operator_id = 'mallory'"))
    finally:
        engine.dispose()
    out = tmp_path / "signed-forgery.json"
    bundle = _export(exported.db_url, exported.run, out)
    assert bundle["approvals"][0]["decided_by"] == ["mallory"]
    report = node_verify(out, exported.key.public_hex)
    assert not report["ok"]
    assert not any("signature" in p for p in report["problems"]), report["problems"]
    assert any("decided_by reads" in p for p in report["problems"])
    assert any('vote by "mallory" is stored but no event records it' in p for p in report["problems"])
    result = runner.invoke(
        app, ["verify-bundle", str(out), "--public-key", exported.key.public_hex, "--json"]
    )
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert any("decided_by reads ['mallory'] but its events say ['alice']" in p for p in problems), problems
    verified = runner.invoke(app, ["verify", "--db", exported.db_url, "--json"])
    assert verified.exit_code == 1
    assert "approval" in json.loads(verified.stdout)["detail"]


def test_a_package_signed_by_another_key_fails_against_the_trusted_package_key(
    exported: Exported, tmp_path: Path
) -> None:
    """An insider who holds the audit key swaps in a package of their own making: the bundle is
    self-consistent, so only the package key the auditor holds catches it."""
    mallory = PackageKey.from_seed("mallory's package seed")
    forged = copy.deepcopy(exported.bundle)
    claims = dict(forged["package"]["claims"], task="refund everyone")
    forged["package"]["token"] = mallory.sign(claims)
    forged["package"]["claims"] = json.loads(json.dumps(claims))
    forged["package"]["public_key"] = {
        "key_id": mallory.key_id,
        "ed25519": mallory.public.public_bytes_raw().hex(),
    }
    resigned = _resign(forged, exported.key)
    path = _write(tmp_path, resigned)
    assert node_verify(path, exported.key.public_hex)["ok"]
    trusted_hex = exported.package_key.public.public_bytes_raw().hex()
    report = node_verify(path, exported.key.public_hex, "--package-key", trusted_hex)
    assert (
        "package " + forged["package"]["id"] + ": signed with another package key than the trusted one"
        in report["problems"]
    )
    result = runner.invoke(
        app,
        [
            "verify-bundle",
            str(path),
            "--public-key",
            exported.key.public_hex,
            "--package-key",
            trusted_hex,
            "--json",
        ],
    )
    assert result.exit_code == 1
    assert any("another package key" in p for p in json.loads(result.stdout)["problems"])
