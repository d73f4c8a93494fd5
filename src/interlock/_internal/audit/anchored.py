"""``audit verify``: the hash chain, anchored in every signed checkpoint, and the approvals it records.

The hash chain alone proves only that the log is internally consistent: whoever can write the
database can rewrite an event, rehash everything after it and move the tip. What they cannot do
without the audit key is sign. So :func:`verify_log`:

1. checks the signature of every stored checkpoint, and of every checkpoint a witness holds or
   the auditor brings (``--trusted-checkpoint``), with the audit key or a retired key named in
   settings; a checkpoint signed by any other key fails;
2. walks the chain (``verify_chain``) while recomputing the RFC 6962 Merkle tree over the event
   hashes, and at each checkpoint's seq compares the recomputed root and tip with the signed ones;
3. fails when the log is shorter than the newest checkpoint (events removed from the end);
4. proves with an RFC 9162 consistency proof that the newest stored checkpoint extends each
   trusted one (the same history, grown at the end);
5. rebuilds every approval (state, deciders, comment, votes) from its events and compares the
   ``approvals`` and ``approval_votes`` rows with it.

It names the first event or checkpoint that disagrees. When a checkpoint's root differs, the
rewritten events lie after the last checkpoint that still matched; the checkpoint's stored frontier
(the roots of its perfect subtrees, which must fold to the signed root) narrows that further to
one subtree, whose first event is named.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.engine import Engine

from interlock._internal.audit.approval_evidence import VERDICT_KIND, collect, compare
from interlock._internal.audit.chain import StoredRow, iter_events
from interlock._internal.audit.checkpoints import (
    Checkpoint,
    Frontier,
    MerkleTree,
    consistency_proof,
    event_hashes,
    leaf_hash,
    stored_checkpoints,
    verify_consistency,
)
from interlock._internal.audit.keys import trusted_keys
from interlock._internal.audit.verify import Problem, VerifyReport, verify_chain
from interlock._internal.audit.witness import (
    WitnessRecord,
    load_record,
    witness_records,
    witnesses_from_settings,
)
from interlock._internal.settings import AuditSettings
from interlock._internal.store.engine import reading
from interlock._internal.store.tables import approval_verdicts, approval_votes, approvals


@dataclass(frozen=True, slots=True)
class Anchor:
    """A signed checkpoint the log must agree with, and where it was found."""

    checkpoint: Checkpoint
    frontier: list[str] | None
    source: str


class _Disagrees(Exception):
    def __init__(self, problem: Problem, seq: int | None, checkpoint: int | None, detail: str) -> None:
        super().__init__(detail)
        self.problem, self.seq, self.checkpoint, self.detail = problem, seq, checkpoint, detail


def verify_log(
    engine: Engine,
    *,
    keys: Mapping[str, Ed25519PublicKey],
    trusted: Sequence[WitnessRecord] = (),
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the chain against every checkpoint (stored and ``trusted``) and the approvals.

    ``keys`` maps key ids to the public keys checkpoints may be signed with (``trusted_keys``).
    """
    # Checkpoints are read before the events: any written meanwhile covers no more than the tip
    # the chain scan will see, so a concurrent checkpoint never looks like a truncation.
    anchors = [Anchor(cp, frontier, "the database") for cp, frontier in stored_checkpoints(engine)]
    anchors += [Anchor(r.checkpoint, r.frontier, r.source) for r in trusted]
    anchors.sort(key=lambda a: a.checkpoint.seq)
    try:
        for anchor in anchors:
            _check_signature(anchor, keys)
    except _Disagrees as bad:
        return _report(bad, VerifyReport(ok=True, events=0))
    walk = _Walk(anchors)
    try:
        report = verify_chain(engine, batch=batch, progress=progress, on_event=walk.see)
    except _Disagrees as bad:
        return _report(bad, replace(walk.partial(), checkpoints=walk.matched))
    report = replace(report, checkpoints=walk.matched)
    if not report.ok:
        return report
    try:
        walk.finish(report.tip_seq)
        _prove_extension(engine, anchors, trusted)
        count = _check_approvals(engine, walk.approval_events, report.tip_seq, report.tip_hash)
    except _Disagrees as bad:
        return _report(bad, report)
    return replace(report, approvals=count)


def _check_signature(anchor: Anchor, keys: Mapping[str, Ed25519PublicKey]) -> None:
    cp = anchor.checkpoint
    public = keys.get(cp.key_id)
    if public is None:
        raise _Disagrees(
            "altered",
            None,
            cp.seq,
            f"checkpoint {cp.seq} in {anchor.source} names key {cp.key_id}, which is neither the audit key "
            "nor a retired key listed in audit.retired_public_keys",
        )
    if not cp.verify(public):
        raise _Disagrees(
            "altered",
            None,
            cp.seq,
            f"the signature of checkpoint {cp.seq} in {anchor.source} does not verify with the audit key: "
            "the checkpoint was altered",
        )


class _Walk:
    """Feeds each verified event into the Merkle tree and checks checkpoints as their seq passes."""

    def __init__(self, anchors: list[Anchor]) -> None:
        self.pending = list(anchors)
        self.frontier = Frontier()
        self.last_good = 0  # the highest checkpoint seq that matched
        self.matched = 0
        self.last: StoredRow | None = None
        self.approval_events: list[tuple[int, str, dict[str, object]]] = []

    def see(self, row: StoredRow) -> None:
        self.frontier.append(leaf_hash(row.hash))
        self.last = row
        if row.kind.startswith("approval.") or row.kind == VERDICT_KIND:
            data = json.loads(row.body)["data"]
            self.approval_events.append((row.seq, row.kind, data))
        while self.pending and self.pending[0].checkpoint.seq == row.seq:
            self._check(self.pending.pop(0), row)

    def _check(self, anchor: Anchor, row: StoredRow) -> None:
        cp = anchor.checkpoint
        if self.frontier.root().hex() == cp.merkle_root and row.hash == cp.tip_hash:
            self.last_good = cp.seq
            self.matched += 1
            return
        first = self._first_changed(anchor)
        raise _Disagrees(
            "altered",
            first,
            cp.seq,
            f"checkpoint {cp.seq} in {anchor.source} (signed) covers events 1 to {cp.seq}, but the "
            f"Merkle root of the stored events differs: events {first} to {cp.seq} hold at least one "
            "rewritten event (rehashed to look intact)",
        )

    def _first_changed(self, anchor: Anchor) -> int:
        """The first seq that can hold the change, from the last matching checkpoint and the frontier."""
        first = self.last_good + 1
        cp = anchor.checkpoint
        try:
            signed = Frontier.from_hex(cp.seq, anchor.frontier or [])
        except ValueError:
            return first
        if signed.root().hex() != cp.merkle_root:
            return first  # an unsigned frontier that does not fold to the signed root says nothing
        start = 0
        for ours, theirs, size in zip(self.frontier.roots, signed.roots, _subtree_sizes(cp.seq), strict=True):
            if ours != theirs:
                return max(first, start + 1)
            start += size
        return first

    def partial(self) -> VerifyReport:
        last = self.last
        if last is None:
            return VerifyReport(ok=True, events=0)
        return VerifyReport(ok=True, events=last.seq, tip_seq=last.seq, tip_hash=last.hash)

    def finish(self, tip_seq: int) -> None:
        if not self.pending:
            return
        anchor = self.pending[-1]
        cp = anchor.checkpoint
        raise _Disagrees(
            "deleted",
            tip_seq + 1,
            cp.seq,
            f"the log ends at event {tip_seq}, but checkpoint {cp.seq} in {anchor.source} (signed) covers "
            f"{cp.seq} events: events {tip_seq + 1} to {cp.seq} were removed",
        )


def _subtree_sizes(size: int) -> list[int]:
    """Sizes of the perfect subtrees of a tree of ``size`` leaves, left to right."""
    return [1 << bit for bit in range(size.bit_length() - 1, -1, -1) if size >> bit & 1]


def _prove_extension(engine: Engine, anchors: list[Anchor], trusted: Sequence[WitnessRecord]) -> None:
    """An RFC 9162 consistency proof from each trusted checkpoint to the newest checkpoint."""
    if not trusted or not anchors:
        return
    newest = anchors[-1].checkpoint
    tree: MerkleTree | None = None
    for record in trusted:
        cp = record.checkpoint
        if cp.seq == newest.seq:
            continue
        if tree is None:
            tree = MerkleTree(leaf_hash(h) for h in event_hashes(engine, upto=newest.seq))
        proof = consistency_proof(tree, cp.seq)
        ok = verify_consistency(
            cp.seq, newest.seq, bytes.fromhex(cp.merkle_root), bytes.fromhex(newest.merkle_root), proof
        )
        if not ok:
            raise _Disagrees(
                "altered",
                None,
                cp.seq,
                f"checkpoint {newest.seq} does not extend checkpoint {cp.seq} from {record.source}: "
                "the consistency proof fails",
            )


_APPROVAL_KINDS = (
    "approval.requested",
    "approval.voted",
    "approval.approved",
    "approval.rejected",
    "approval.cancelled",
    "approval.expired",
    VERDICT_KIND,
)


def _check_approvals(
    engine: Engine, events: list[tuple[int, str, dict[str, object]]], tip_seq: int, tip_hash: str
) -> int:
    """Compare approval rows with their events. A server deciding an approval while this runs
    commits rows and event together; the rows may then be newer than the verified events, so a
    disagreement is re-read with the events appended since (only those that chain from the
    verified tip) before it is reported."""
    problems: list[str] = []
    seq: int | None = None
    for _attempt in range(3):
        with reading(engine) as conn:
            rows = [
                dict(r) for r in conn.execute(select(approvals).order_by(approvals.c.created_at)).mappings()
            ]
            votes: dict[str, list[dict[str, object]]] = {}
            for v in conn.execute(select(approval_votes)).mappings():
                votes.setdefault(str(v["approval_id"]), []).append(dict(v))
            verdicts = {
                str(v["approval_id"]): dict(v) for v in conn.execute(select(approval_verdicts)).mappings()
            }
        expected = collect([*events, *_tail(engine, tip_seq, tip_hash)])
        problems, seq = [], None
        for row in rows:
            found = compare(
                row, votes.pop(row["id"], []), expected.get(row["id"]), verdicts.pop(row["id"], None)
            )
            if found and not problems:
                ex = expected.get(row["id"])
                seq = ex.seq if ex else None
            problems += found
        problems += [f"votes are stored for approval {aid}, which does not exist" for aid in sorted(votes)]
        problems += [
            f"a verdict is stored for approval {aid}, which does not exist" for aid in sorted(verdicts)
        ]
        if not problems:
            return len(rows)
    raise _Disagrees("altered", seq, None, "; ".join(problems[:5]))


def _tail(engine: Engine, tip_seq: int, tip_hash: str) -> list[tuple[int, str, dict[str, object]]]:
    """Approval events appended after the verified tip, as far as they chain from it."""
    found: list[tuple[int, str, dict[str, object]]] = []
    last_seq, last_hash = tip_seq, tip_hash
    for event in iter_events(engine, since_seq=tip_seq):
        if event.seq != last_seq + 1 or event.prev_hash != last_hash:
            break
        last_seq, last_hash = event.seq, event.hash
        if event.kind in _APPROVAL_KINDS:
            found.append((event.seq, event.kind, event.data))
    return found


def _report(bad: _Disagrees, base: VerifyReport) -> VerifyReport:
    return replace(
        base,
        ok=False,
        first_bad_seq=bad.seq,
        problem=bad.problem,
        detail=bad.detail,
        checkpoint=bad.checkpoint,
    )


def verify_with_settings(
    engine: Engine,
    settings: AuditSettings,
    *,
    trusted_files: Sequence[Path] = (),
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """:func:`verify_log` with the keys and witness directory the settings name, plus checkpoint
    files an auditor brings (``--trusted-checkpoint``)."""
    trusted = witness_records(witnesses_from_settings(settings))
    trusted += [load_record(path) for path in trusted_files]
    return verify_log(engine, keys=trusted_keys(settings), trusted=trusted, progress=progress)


__all__ = ["Anchor", "verify_log", "verify_with_settings"]
