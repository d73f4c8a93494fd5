"""Evidence bundles: everything about one run an auditor needs, in one signed JSON file, checkable offline.

A bundle holds the run, the signed work package it was started with (if any),
its steps, decisions and approvals, every audit event of the run (the exact
hashed body, its chain links and an inclusion proof), the manifest and Cedar policy text the
decisions were made under, a signed checkpoint covering every event, and the audit public key. The
whole bundle is signed with the audit key over its canonical JSON without ``signature``.

:func:`verify_bundle` needs no database and trusts nothing in the bundle except what the auditor's
own copy of the public key vouches for. It checks, and names every failure it finds:

- the bundle's signature and the checkpoint's signature, with the trusted key;
- each event's hash recomputed from its body, the body's seq and run, the chain link between
  events that are consecutive in the log, and each inclusion proof against the checkpoint's root;
- that every step, decision, approval and the run itself have the audit events that record them,
  and that the copies in the tables agree with what those events hashed (decision, tool, argument
  hash, result hash, manifest and policy version);
- that each manifest and policy text hashes to the version the decisions name;
- that the work package the run was started with, if any, is signed by the package key and
  names the run's workflow, agent and environment (``package_evidence.py``).

docs/audit-format.md specifies the bundle for verifiers written elsewhere.

Payloads are stored redacted, so stored arguments match the argument hash only when redaction
changed nothing; the export says which ones were redacted or purged and the verifier holds the
rest to their hash.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.audit.approval_evidence import collect, compare
from interlock._internal.audit.canonical import hash_value, legacy_canonical_json, sha256_hex
from interlock._internal.audit.chain import EVENT_COLUMNS, event_hash
from interlock._internal.audit.checkpoints import (
    Checkpoint,
    MerkleTree,
    covering_checkpoint,
    event_hashes,
    leaf_hash,
    verify_inclusion,
)
from interlock._internal.audit.keys import (
    AuditKey,
    raw_public_bytes,
    verify_signature,
    verify_signature_bytes,
)
from interlock._internal.audit.package_evidence import check_package, package_public_key
from interlock._internal.runs.retention import is_marker
from interlock._internal.store.engine import reading
from interlock._internal.store.tables import (
    approval_verdicts,
    approval_votes,
    approvals,
    audit_events,
    decisions,
    runs,
    steps,
    work_packages,
    workflow_versions,
)
from interlock.exceptions import AuditIntegrityError, ConfigError, InterlockError, NotFound

if TYPE_CHECKING:
    from interlock._internal.audit.witness import Witness

BUNDLE_FORMAT = "interlock.evidence/v2"
# Signed over the legacy canonical form and without votes; still verified, never written.
BUNDLE_FORMAT_V1 = "interlock.evidence/v1"


def is_purged(value: Any) -> bool:
    """Whether a stored payload is a purge marker (``{"purged": true, "sha256": …}``)."""
    return is_marker(value) and isinstance(value["sha256"], str)


def _classify_arguments(value: Any, args_hash: str | None) -> str:
    if value is None:
        return "absent"
    if is_purged(value):
        return "purged"
    return "bound" if args_hash is not None and _try_hash(value) == args_hash else "redacted"


def _try_hash(value: Any) -> str | None:
    try:
        return hash_value(value)
    except (TypeError, ValueError):
        return None


# ---- export ---------------------------------------------------------------------------------------


def export_bundle(
    engine: Engine,
    run_id: str,
    key: AuditKey,
    *,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
    witnesses: Sequence[Witness] = (),
    package_key: Ed25519PublicKey | None = None,
) -> dict[str, Any]:
    """Build and sign the evidence bundle of one run.

    Writes a fresh checkpoint when none by ``key`` covers the run's last event. ``package_key`` is
    the work-package public key: when the run was started with a package, the bundle names it so
    that the package's signature can be checked offline. Raises :class:`NotFound` for an unknown
    run and :class:`AuditIntegrityError` when the stored events do not hash or prove against the
    checkpoint (the log was altered; run ``interlock audit verify``).
    """
    say = progress or (lambda _msg: None)
    say("reading the run")
    records = _read_run(engine, run_id)
    if records["package"] is not None:
        records["package"]["public_key"] = None if package_key is None else package_public_key(package_key)
    versions = [_version(v) for v in records.pop("workflow_versions")]
    checkpoint, events = _prove(engine, key, records.pop("events"), say, witnesses)
    result_hashes = _result_hashes(events)
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "generated_at": time.time() if now is None else now,
        **records,
        "payloads": {
            "steps": [
                {
                    "step": s["id"],
                    "args_hash": s["args_hash"],
                    "arguments": _classify_arguments(s["arguments"], s["args_hash"]),
                    "result_hash": result_hashes.get(s["id"]),
                }
                for s in records["steps"]
            ],
            "decisions": {
                d["id"]: _classify_arguments(d["arguments"], d["args_hash"]) for d in records["decisions"]
            },
            "approvals": {
                a["id"]: _classify_arguments(a["arguments"], a["args_hash"]) for a in records["approvals"]
            },
        },
        "events": events,
        "workflow_versions": versions,
        "checkpoint": checkpoint.as_dict(),
        "public_key": {"key_id": key.key_id, "ed25519": key.public_hex},
    }
    say("signing the bundle")
    bundle["signature"] = key.sign(bundle)
    return bundle


def _read_run(engine: Engine, run_id: str) -> dict[str, Any]:
    """The run's rows, the workflow versions they name, and its stored audit events, in one snapshot."""

    def rows(query: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in conn.execute(query).mappings()]

    with reading(engine) as conn:
        run = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        if run is None:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        by_run = decisions.c.run_id == run_id
        of_run = select(approvals.c.id).where(approvals.c.run_id == run_id)
        decision_rows = rows(select(decisions).where(by_run).order_by(decisions.c.created_at, decisions.c.id))
        version_ids = {run["workflow_version_id"]} | {
            d["manifest_version"] for d in decision_rows if d["manifest_version"] is not None
        }
        package = None
        if run.get("package_id") is not None:
            # The signed package itself: an auditor checks it with the package public key.
            found = (
                conn.execute(
                    select(
                        work_packages.c.id,
                        work_packages.c.token,
                        work_packages.c.claims,
                        work_packages.c.state,
                        work_packages.c.revoked_at,
                    ).where(work_packages.c.id == run["package_id"])
                )
                .mappings()
                .first()
            )
            package = None if found is None else dict(found)
        return {
            "run": dict(run),
            "package": package,
            "steps": rows(select(steps).where(steps.c.run_id == run_id).order_by(steps.c.seq)),
            "decisions": decision_rows,
            "approvals": rows(
                select(approvals)
                .where(approvals.c.run_id == run_id)
                .order_by(approvals.c.created_at, approvals.c.id)
            ),
            "approval_votes": rows(
                select(approval_votes)
                .where(approval_votes.c.approval_id.in_(of_run))
                .order_by(
                    approval_votes.c.approval_id, approval_votes.c.created_at, approval_votes.c.operator_id
                )
            ),
            "approval_verdicts": rows(
                select(approval_verdicts)
                .where(approval_verdicts.c.approval_id.in_(of_run))
                .order_by(approval_verdicts.c.approval_id)
            ),
            "workflow_versions": rows(
                select(workflow_versions)
                .where(workflow_versions.c.id.in_(sorted(version_ids)))
                .order_by(workflow_versions.c.id)
            ),
            "events": conn.execute(
                select(*EVENT_COLUMNS).where(audit_events.c.run_id == run_id).order_by(audit_events.c.seq)
            ).all(),
        }


def _prove(
    engine: Engine, key: AuditKey, event_rows: Any, say: Callable[[str], None], witnesses: Sequence[Witness]
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """A checkpoint covering the events, and each event with its inclusion proof against it."""
    if not event_rows:
        raise AuditIntegrityError("the run has no audit events", details={"problem": "deleted"})
    for row in event_rows:
        if event_hash(row.prev_hash, row.body) != row.hash:
            raise AuditIntegrityError(
                f"audit event {row.seq} does not match its hash; run `interlock audit verify`",
                details={"seq": int(row.seq), "problem": "altered"},
            )
    say("checkpointing the audit log")
    checkpoint = covering_checkpoint(engine, key, int(event_rows[-1].seq), witnesses=witnesses)
    say(f"building the Merkle tree over {checkpoint.seq} events")
    tree = MerkleTree(leaf_hash(h) for h in event_hashes(engine, upto=checkpoint.seq))
    if tree.root().hex() != checkpoint.merkle_root:
        raise AuditIntegrityError(
            f"the audit log no longer matches checkpoint {checkpoint.seq}; run `interlock audit verify`",
            details={"checkpoint": checkpoint.seq, "problem": "altered"},
        )
    events = []
    for row in event_rows:
        seq = int(row.seq)
        # The run's rows were read before the tree; a row rewritten in between must not slip through.
        if tree.levels[0][32 * (seq - 1) : 32 * seq] != leaf_hash(row.hash):
            raise AuditIntegrityError(
                f"audit event {seq} changed while exporting", details={"seq": seq, "problem": "altered"}
            )
        events.append(
            {
                "seq": seq,
                "body": row.body,
                "prev_hash": row.prev_hash,
                "hash": row.hash,
                "hash_format": int(row.hash_format),
                "proof": [p.hex() for p in tree.proof(seq - 1)],
            }
        )
    return checkpoint, events


def _result_hashes(events: list[dict[str, Any]]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for event in events:
        body = json.loads(event["body"])
        data = body.get("data") or {}
        if str(body.get("kind", "")).startswith("action.") and isinstance(data.get("step"), str):
            found.setdefault(data["step"], data.get("result_hash"))
    return found


def _version(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "workflow": row["workflow"],
        "version": row["version"],
        "sha256": row["sha256"],
        "policy_sha256": row["policy_sha256"],
        "manifest": row["manifest"],
        "cedar_policies": row["cedar_policies"],
        "cedar_schema": _cedar_schema(row),
    }


def _cedar_schema(row: dict[str, Any]) -> str | None:
    """The Cedar schema JSON the policy hash was taken over, rebuilt from the stored manifest.

    ``None`` when the manifest no longer compiles here (say, its extra policy files moved) or the
    rebuilt schema does not reproduce the stored hash; the verifier then reports the policy text as
    unchecked rather than wrong.
    """
    from interlock._internal.manifest.loader import load_manifest_text
    from interlock._internal.policy.compiler import cedar_schema

    base = Path(row["source_path"]).parent if row.get("source_path") else None
    try:
        loaded = load_manifest_text(row["manifest"], file=row["id"], base_dir=base)
        schema = json.dumps(cedar_schema(loaded.manifest))
    except (InterlockError, ValueError, TypeError):
        return None
    if sha256_hex(row["cedar_policies"].encode() + schema.encode()) != row["policy_sha256"]:
        return None
    return schema


# ---- offline verification --------------------------------------------------------------------------


@dataclass
class BundleReport:
    """What :func:`verify_bundle` found. ``ok`` means no problem; warnings do not fail a bundle."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    run_id: str | None = None
    events: int = 0
    checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def message(self) -> str:
        if self.ok:
            return (
                f"bundle verified: run {self.run_id}, {self.events} events, checkpoint {self.checkpoint_seq}"
            )
        return "bundle NOT verified: " + "; ".join(self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
            "run_id": self.run_id,
            "events": self.events,
            "checkpoint_seq": self.checkpoint_seq,
            "message": self.message,
        }


def verify_bundle(
    bundle: Any, public_key: Ed25519PublicKey, *, package_key: Ed25519PublicKey | None = None
) -> BundleReport:
    """Check a bundle against the trusted public key, offline. Never raises for a bad bundle.

    ``package_key``: the work-package public key, when the auditor holds it; the bundle's own
    copy of it (covered by the bundle signature) is checked against it.
    """
    report = BundleReport()
    try:
        _Verifier(bundle, public_key, report, package_key).run()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        report.problems.append(f"malformed bundle: {type(exc).__name__}: {exc}")
    return report


def load_bundle(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"bundle {path} is not JSON: {exc}") from exc


class _Verifier:
    def __init__(
        self,
        bundle: Any,
        public: Ed25519PublicKey,
        report: BundleReport,
        package_key: Ed25519PublicKey | None = None,
    ) -> None:
        if not isinstance(bundle, dict):
            raise TypeError("a bundle is a JSON object")
        self.b = bundle
        self.public = public
        self.package_key = package_key
        self.r = report
        self.fail = report.problems.append
        self.bodies: list[dict[str, Any]] = []

    def run(self) -> None:
        b = self.b
        if b.get("format") not in (BUNDLE_FORMAT, BUNDLE_FORMAT_V1):
            self.fail(f"unknown bundle format {b.get('format')!r}")
            return
        self.r.run_id = b["run"]["id"]
        trusted = raw_public_bytes(self.public).hex()
        if b["public_key"].get("ed25519") != trusted:
            self.fail("the public key in the bundle is not the trusted key")
        unsigned = {k: v for k, v in b.items() if k != "signature"}
        if b["format"] == BUNDLE_FORMAT_V1:
            self.r.warnings.append("format v1 bundle: it carries no votes, so votes are unchecked")
            signed = verify_signature_bytes(self.public, legacy_canonical_json(unsigned), b.get("signature"))
        else:
            signed = verify_signature(self.public, unsigned, b.get("signature"))
        if not signed:
            self.fail("bundle signature does not verify with the trusted key")
        checkpoint = Checkpoint.from_dict(b["checkpoint"])
        self.r.checkpoint_seq = checkpoint.seq
        if not checkpoint.verify(self.public):
            self.fail(f"checkpoint {checkpoint.seq} signature does not verify with the trusted key")
        self._events(checkpoint)
        self._records()
        self._versions()
        self._package()

    def _package(self) -> None:
        package, run = self.b.get("package"), self.b["run"]
        if package is None:
            if run.get("package_id") is not None:
                self.fail(
                    f"run {run['id']}: started with package {run['package_id']}, which is not in the bundle"
                )
            return
        problems, warnings = check_package(package, run, trusted=self.package_key)
        self.r.problems.extend(problems)
        self.r.warnings.extend(warnings)

    def _events(self, checkpoint: Checkpoint) -> None:
        run_id = self.r.run_id
        root = bytes.fromhex(checkpoint.merkle_root)
        previous: dict[str, Any] | None = None
        for event in self.b["events"]:
            seq = event["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                self.fail(f"event with seq {seq!r}: not a positive integer")
                continue
            if event_hash(event["prev_hash"], event["body"]) != event["hash"]:
                self.fail(f"event {seq}: hash does not match its body")
            try:
                body = json.loads(event["body"])
            except ValueError:
                self.fail(f"event {seq}: body is not JSON")
                continue
            if not isinstance(body, dict) or body.get("seq") != seq:
                recorded = body.get("seq") if isinstance(body, dict) else None
                self.fail(f"event {seq}: body records another seq ({recorded!r})")
                continue
            if body.get("run_id") != run_id:
                self.fail(f"event {seq}: belongs to run {body.get('run_id')!r}, not {run_id!r}")
            if previous is not None:
                if seq <= previous["seq"]:
                    self.fail(f"event {seq}: out of order after event {previous['seq']}")
                elif seq == previous["seq"] + 1 and event["prev_hash"] != previous["hash"]:
                    self.fail(f"event {seq}: does not link to event {previous['seq']}")
            if seq > checkpoint.seq:
                self.fail(f"event {seq}: beyond checkpoint {checkpoint.seq}")
            elif not verify_inclusion(
                leaf_hash(event["hash"]),
                seq - 1,
                checkpoint.seq,
                [bytes.fromhex(p) for p in event["proof"]],
                root,
            ):
                self.fail(f"event {seq}: inclusion proof does not lead to the checkpoint's Merkle root")
            if seq == checkpoint.seq and event["hash"] != checkpoint.tip_hash:
                self.fail(f"event {seq}: is not the checkpoint's tip")
            self.bodies.append(body)
            previous = event
        self.r.events = len(self.bodies)

    def _actions(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        # The first action event of a step is the one written when it was decided. Steps that are
        # not tool actions may be recorded by other kinds of event naming the step.
        actions: dict[str, dict[str, Any]] = {}
        named: set[str] = set()
        for body in self.bodies:
            data = body.get("data") or {}
            if isinstance(data.get("step"), str):
                named.add(data["step"])
                if str(body.get("kind", "")).startswith("action."):
                    actions.setdefault(data["step"], data)
        return actions, named

    def _records(self) -> None:
        b, run = self.b, self.b["run"]
        kinds = [body.get("kind") for body in self.bodies]
        started = [body for body in self.bodies if body.get("kind") == "run.started"]
        if not started:
            self.fail(f"run {run['id']}: its run.started event is missing")
        elif (started[0].get("data") or {}).get("manifest_version") != run["workflow_version_id"]:
            self.fail(f"run {run['id']}: workflow version differs from its run.started event")
        if run.get("ended_at") is not None and f"run.{run['state']}" not in kinds:
            self.fail(f"run {run['id']}: no run.{run['state']} event records how it ended")
        actions, named = self._actions()
        payloads = b["payloads"]
        step_payloads = {p["step"]: p for p in payloads["steps"]}
        for step in b["steps"]:
            sid = step["id"]
            event = actions.get(sid)
            if event is None:
                if step.get("kind") == "tool" or sid not in named:
                    self.fail(f"step {sid}: no audit event records it")
                continue
            if step["args_hash"] != event.get("args_hash"):
                self.fail(f"step {sid}: argument hash differs from its audit event")
            if step["tool"] != event.get("tool") or step["seq"] != event.get("seq"):
                self.fail(f"step {sid}: tool or position differs from its audit event")
            claimed = (step_payloads.get(sid) or {}).get("arguments")
            self._arguments(f"step {sid}", step["arguments"], step["args_hash"], claimed)
            self._result(sid, step.get("result"), event.get("result_hash"))
        for decision in b["decisions"]:
            did = decision["id"]
            event = actions.get(decision.get("step_id") or did)
            if event is None:
                self.fail(f"decision {did}: no audit event records it")
                continue
            for name in ("decision", "args_hash", "tool", "manifest_version", "policy_version", "policy_ids"):
                if decision.get(name) != event.get(name):
                    self.fail(f"decision {did}: {name} differs from its audit event")
            codes = [r.get("code") for r in decision.get("reasons") or []]
            if codes != event.get("reasons"):
                self.fail(f"decision {did}: reasons differ from its audit event")
            self._arguments(
                f"decision {did}",
                decision.get("arguments"),
                decision.get("args_hash"),
                payloads["decisions"].get(did),
            )
        requested = {
            (body.get("data") or {}).get("approval"): body.get("data") or {}
            for body in self.bodies
            if body.get("kind") == "approval.requested"
        }
        for approval in b["approvals"]:
            aid = approval["id"]
            event = requested.get(aid)
            if event is None:
                self.fail(f"approval {aid}: no approval.requested event records it")
            elif event.get("args_hash") != approval["args_hash"] or event.get("step") != approval["step_id"]:
                self.fail(f"approval {aid}: argument hash or step differs from its audit event")
            self._arguments(
                f"approval {aid}",
                approval.get("arguments"),
                approval["args_hash"],
                payloads["approvals"].get(aid),
            )
        self._approval_record()

    def _approval_record(self) -> None:
        """State, deciders, comment and every vote of each approval, against its events."""
        if self.b["format"] == BUNDLE_FORMAT_V1:
            return
        expected = collect(
            (body["seq"], str(body.get("kind", "")), body.get("data") or {}) for body in self.bodies
        )
        votes: dict[str, list[dict[str, Any]]] = {}
        for vote in self.b["approval_votes"]:
            votes.setdefault(vote["approval_id"], []).append(vote)
        # Bundles exported before verifier gates carry no verdicts; their approvals have none.
        carried = "approval_verdicts" in self.b
        verdicts = {v["approval_id"]: v for v in self.b.get("approval_verdicts") or []}
        for approval in self.b["approvals"]:
            problems = compare(
                approval,
                votes.pop(approval["id"], []),
                expected.get(approval["id"]),
                verdicts.pop(approval["id"], None),
                verdicts_carried=carried,
            )
            for problem in problems:
                if "no approval.requested event" not in problem:  # reported above
                    self.fail(problem)
        for aid in sorted(votes):
            self.fail(f"votes for approval {aid}, which is not in the bundle")
        for aid in sorted(verdicts):
            self.fail(f"a verdict for approval {aid}, which is not in the bundle")

    def _arguments(self, what: str, value: Any, args_hash: str | None, claimed: str | None) -> None:
        actual = _classify_arguments(value, args_hash)
        if actual == claimed:
            return
        if actual == "redacted" and claimed == "bound":
            self.fail(f"{what}: arguments do not hash to the recorded argument hash")
        else:
            self.fail(f"{what}: arguments are {actual}, the bundle says {claimed}")

    def _result(self, sid: str, value: Any, result_hash: Any) -> None:
        if value is None:
            if result_hash is not None:
                self.fail(f"step {sid}: result is missing but its audit event hashed one")
        elif is_purged(value):
            if value["sha256"] != result_hash:
                self.fail(f"step {sid}: purged result's hash differs from its audit event")
        elif _try_hash(value) != result_hash:
            self.fail(f"step {sid}: result does not hash to its audit event's result hash")

    def _versions(self) -> None:
        versions = {v["id"]: v for v in self.b["workflow_versions"]}
        for vid, version in versions.items():
            digest = hashlib.sha256(version["manifest"].encode("utf-8")).hexdigest()
            if digest != version["sha256"] or not vid.endswith("#" + digest[:12]):
                self.fail(f"workflow version {vid}: manifest text does not hash to the version")
            schema = version.get("cedar_schema")
            if schema is None:
                self.r.warnings.append(
                    f"workflow version {vid}: policy text unchecked (the Cedar schema it was hashed with "
                    "is not in the bundle)"
                )
            elif sha256_hex(version["cedar_policies"].encode() + schema.encode()) != version["policy_sha256"]:
                self.fail(f"workflow version {vid}: Cedar policy text does not hash to the version")
        run = self.b["run"]
        if run["workflow_version_id"] not in versions:
            self.fail(
                f"run {run['id']}: its workflow version {run['workflow_version_id']} is not in the bundle"
            )
        for decision in self.b["decisions"]:
            named = decision.get("manifest_version")
            version = versions.get(named) if named is not None else None
            if version is None:
                self.fail(f"decision {decision['id']}: manifest version {named!r} is not in the bundle")
            elif decision.get("policy_version") != version["policy_sha256"]:
                self.fail(f"decision {decision['id']}: policy version is not the one stored with {named}")


def bundle_bytes(bundle: dict[str, Any]) -> bytes:
    """The bundle as written to disk: indented for people; signatures cover canonical JSON, not this."""
    return json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


__all__ = [
    "BUNDLE_FORMAT",
    "BundleReport",
    "bundle_bytes",
    "export_bundle",
    "is_purged",
    "load_bundle",
    "verify_bundle",
]
