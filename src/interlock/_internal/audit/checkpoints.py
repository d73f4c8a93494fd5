"""Signed checkpoints of the audit chain, and the Merkle tree that makes events provable one by one.

A checkpoint says "the chain had ``seq`` events, the last one hashed ``tip_hash``, and the Merkle
root over all their hashes is ``merkle_root``", signed with the audit key. The hash chain alone
cannot stop someone who can rewrite the database from rebuilding every hash after an edit; a signed
checkpoint pins the history up to it, and publishing checkpoints elsewhere (a ticket, a log
bucket) bounds what such a rewrite can hide.

The tree is RFC 6962's (Certificate Transparency): leaf = SHA-256(0x00 ‖ event hash), node =
SHA-256(0x01 ‖ left ‖ right), the left subtree of n leaves holding the largest power of two below n.
The domain-separation bytes keep a leaf from passing as a node. Inclusion proofs are the sibling
hashes on the way up, so a proof for one event of a million-event log holds about 20 hashes and is
checked without the rest of the log (:func:`verify_inclusion`, RFC 9162 section 2.1.3.2).
Between two checkpoints, a consistency proof (:func:`consistency_proof`, RFC 9162 section 2.1.4)
shows that the later tree extends the earlier one: the history the earlier one signed is still the
prefix of the log, unchanged.

``audit verify`` checks every stored checkpoint (``verify.py``); each new checkpoint is also handed
to the witnesses configured in settings (``witness.py``), outside the database.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from interlock._internal.audit.canonical import legacy_canonical_json
from interlock._internal.audit.chain import GENESIS_HASH, HEAD_ID, event_hash
from interlock._internal.audit.keys import AuditKey, verify_signature, verify_signature_bytes
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.tables import audit_checkpoints, audit_events, audit_head
from interlock.exceptions import AuditIntegrityError, InterlockError, NotFound, StorageError

if TYPE_CHECKING:
    from interlock._internal.audit.witness import Witness

CHECKPOINT_TYPE = "interlock.audit.checkpoint/v2"
# Signed over the legacy canonical form (hash format 1); still accepted, never written.
CHECKPOINT_TYPE_V1 = "interlock.audit.checkpoint/v1"
EMPTY_ROOT = hashlib.sha256(b"").hexdigest()
_PAGE = 5000


# ---- the Merkle tree ------------------------------------------------------------------------------


def leaf_hash(event_hash_hex: str) -> bytes:
    """The tree leaf for one event: SHA-256(0x00 ‖ the event's 32-byte chain hash)."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(event_hash_hex)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Frontier:
    """A Merkle tree kept as the roots of its perfect subtrees, left to right (O(log n) hashes).

    Appending a leaf merges equal-sized subtrees like a binary counter carrying; the root folds the
    subtrees from the right, which is exactly RFC 6962's split at the largest power of two.
    """

    def __init__(self, size: int = 0, roots: Sequence[bytes] = ()) -> None:
        if size < 0 or len(roots) != bin(size).count("1"):
            raise ValueError(f"a tree of {size} leaves has {bin(size).count('1')} subtree roots")
        self.size = size
        self.roots = list(roots)

    def append(self, leaf: bytes) -> None:
        carry, n = leaf, self.size
        while n & 1:
            carry = node_hash(self.roots.pop(), carry)
            n >>= 1
        self.roots.append(carry)
        self.size += 1

    def root(self) -> bytes:
        if not self.roots:
            return bytes.fromhex(EMPTY_ROOT)
        acc = self.roots[-1]
        for left in reversed(self.roots[:-1]):
            acc = node_hash(left, acc)
        return acc

    def to_hex(self) -> list[str]:
        return [r.hex() for r in self.roots]

    @classmethod
    def from_hex(cls, size: int, roots: Iterable[str]) -> Frontier:
        return cls(size, [bytes.fromhex(r) for r in roots])


class MerkleTree:
    """Every level of a tree, for inclusion proofs. Levels are packed bytes, 32 per node.

    Pairing nodes left to right and carrying an odd last node up unchanged builds the same tree as
    RFC 6962's recursive definition; packing keeps a million leaves near 64 MB.
    """

    def __init__(self, leaves: Iterable[bytes]) -> None:
        level = b"".join(leaves)
        self.size = len(level) // 32
        self.levels = [level]
        while len(level) > 32:
            n = len(level) // 32
            up = bytearray()
            for i in range(0, n - 1, 2):
                up += hashlib.sha256(b"\x01" + level[32 * i : 32 * i + 64]).digest()
            if n % 2:
                up += level[32 * (n - 1) :]
            level = bytes(up)
            self.levels.append(level)

    def root(self) -> bytes:
        return self.levels[-1] if self.size else bytes.fromhex(EMPTY_ROOT)

    def proof(self, index: int) -> list[bytes]:
        """The audit path for leaf ``index`` (0-based), bottom-up, as RFC 9162 verifies it."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size}")
        path: list[bytes] = []
        for level in self.levels[:-1]:
            n = len(level) // 32
            sibling = index ^ 1
            if sibling < n:
                path.append(level[32 * sibling : 32 * sibling + 32])
            index >>= 1
        return path


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` put ``leaf`` at ``index`` of the tree with ``root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def subtree_root(tree: MerkleTree, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for the ranges RFC 6962's recursion visits (left parts perfect and aligned)."""
    n = end - start
    if n == 1:
        return tree.levels[0][32 * start : 32 * start + 32]
    if n & (n - 1) == 0 and start % n == 0:
        depth, index = n.bit_length() - 1, start // n
        return tree.levels[depth][32 * index : 32 * index + 32]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(subtree_root(tree, start, start + k), subtree_root(tree, start + k, end))


def consistency_proof(tree: MerkleTree, first: int) -> list[bytes]:
    """RFC 9162 section 2.1.4.1: the proof that the tree of ``first`` leaves is a prefix of ``tree``."""
    if not 0 < first <= tree.size:
        raise ValueError(f"no consistency proof from {first} leaves to a tree of {tree.size}")

    def subproof(m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [subtree_root(tree, start, end)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return [*subproof(m, start, start + k, complete), subtree_root(tree, start + k, end)]
        return [*subproof(m - k, start + k, end, False), subtree_root(tree, start, start + k)]

    return subproof(first, 0, tree.size, True)


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: does ``proof`` show the tree of ``second`` leaves extends ``first``?"""
    if not 0 < first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


# ---- checkpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement of the chain's state at ``seq``."""

    seq: int
    tip_hash: str
    merkle_root: str
    ts: float
    key_id: str
    signature: str
    type: str = CHECKPOINT_TYPE

    def signed_body(self) -> dict[str, Any]:
        """The exact object the signature covers (as canonical JSON)."""
        return {
            "type": self.type,
            "seq": self.seq,
            "tip_hash": self.tip_hash,
            "merkle_root": self.merkle_root,
            "ts": self.ts,
            "key_id": self.key_id,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verify(self, public: Ed25519PublicKey) -> bool:
        if self.type == CHECKPOINT_TYPE:
            return verify_signature(public, self.signed_body(), self.signature)
        if self.type == CHECKPOINT_TYPE_V1:
            return verify_signature_bytes(public, legacy_canonical_json(self.signed_body()), self.signature)
        return False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        """Rebuild from :meth:`as_dict` output; raises ``ValueError`` when a field is missing or mistyped."""
        try:
            cp = cls(
                seq=data["seq"],
                tip_hash=data["tip_hash"],
                merkle_root=data["merkle_root"],
                ts=data["ts"],
                key_id=data["key_id"],
                signature=data["signature"],
                type=data.get("type", CHECKPOINT_TYPE_V1),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"checkpoint field missing: {exc}") from exc
        if not isinstance(cp.seq, int) or isinstance(cp.seq, bool) or cp.seq < 0:
            raise ValueError("checkpoint seq is not a non-negative integer")
        if not isinstance(cp.ts, (int, float)) or isinstance(cp.ts, bool):
            raise ValueError("checkpoint ts is not a number")
        for name in ("tip_hash", "merkle_root", "key_id", "signature", "type"):
            if not isinstance(getattr(cp, name), str):
                raise ValueError(f"checkpoint {name} is not a string")
        return cp


def sign_checkpoint(key: AuditKey, *, seq: int, tip_hash: str, merkle_root: str, ts: float) -> Checkpoint:
    unsigned = Checkpoint(seq, tip_hash, merkle_root, ts, key.key_id, "")
    return Checkpoint(seq, tip_hash, merkle_root, ts, key.key_id, key.sign(unsigned.signed_body()))


def latest_checkpoint(engine: Engine, *, key_id: str | None = None) -> Checkpoint | None:
    """The checkpoint with the highest seq (signed by ``key_id``, when given). Not verified here."""
    with reading(engine) as conn:
        row = _latest_row(conn, key_id)
    return None if row is None else _from_row(row)


def write_checkpoint(
    engine: Engine,
    key: AuditKey,
    *,
    now: float | None = None,
    witnesses: Sequence[Witness] = (),
) -> Checkpoint:
    """Sign and store a checkpoint at the chain's current tip, publish it to ``witnesses``, return it.

    Extends this key's latest checkpoint, from the database or from a witness directory, whichever
    is newer: the events after it are re-hashed from their bodies and must link to its tip, and its
    frontier must fold to its signed root. Without one (first checkpoint, or a new key), the whole
    chain is read from genesis. If the tip has not moved, the latest checkpoint is returned (and
    published again: witnesses take a checkpoint they already hold).

    Raises :class:`NotFound` (code ``audit_empty``) for an empty chain, and
    :class:`AuditIntegrityError` when the chain or the previous checkpoint does not hold up (the
    key never signs a history it cannot connect to what it signed before), and
    :class:`StorageError` (code ``witness_unavailable``) when a witness did not take it; the
    checkpoint is stored in the database all the same.
    """
    with reading(engine) as conn:
        tip = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
        ).first()
        previous = _latest_row(conn, key.key_id)
    tip_seq, tip_hash = (int(tip[0]), str(tip[1])) if tip is not None else (0, GENESIS_HASH)
    if tip_seq == 0:
        raise NotFound("the audit log is empty: nothing to checkpoint", code="audit_empty")
    anchor = _anchor(key, previous, witnesses)
    if anchor is not None:
        prev_cp, frontier = anchor
        if prev_cp.seq > tip_seq:
            raise AuditIntegrityError(
                f"the audit log ends at event {tip_seq} but checkpoint {prev_cp.seq} covers "
                f"{prev_cp.seq} events: events were removed; run `interlock audit verify`",
                details={"checkpoint": prev_cp.seq, "seq": tip_seq + 1, "problem": "deleted"},
            )
        if prev_cp.seq == tip_seq:
            if prev_cp.tip_hash != tip_hash:
                raise _broken(tip_seq, "does not match the hash its checkpoint signed", "altered")
            _publish(engine, witnesses, prev_cp, frontier.to_hex(), None)
            return prev_cp
        after, last_hash = prev_cp.seq, prev_cp.tip_hash
    else:
        prev_cp, frontier, after, last_hash = None, Frontier(), 0, GENESIS_HASH
    expected = after + 1
    for seq, prev_hash, stored_hash, body in _event_pages(engine, after=after, upto=tip_seq, with_body=True):
        if seq != expected:
            raise _broken(expected, "is missing", "deleted")
        if prev_hash != last_hash:
            raise _broken(seq, "does not link to the event before it", "altered")
        if event_hash(prev_hash, body) != stored_hash:
            raise _broken(seq, "does not match its hash", "altered")
        frontier.append(leaf_hash(stored_hash))
        last_hash, expected = stored_hash, seq + 1
    if expected != tip_seq + 1:
        raise _broken(expected, "is missing", "deleted")
    if last_hash != tip_hash:
        raise _broken(tip_seq, "does not match the hash the chain tip recorded", "altered")
    ts = time.time() if now is None else now
    checkpoint = sign_checkpoint(
        key, seq=tip_seq, tip_hash=tip_hash, merkle_root=frontier.root().hex(), ts=ts
    )
    row = {**checkpoint.as_dict(), "frontier": frontier.to_hex()}
    with transaction(engine) as conn:
        # Two replicas checkpointing the same tip: the first row stays and both return it.
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        written = conn.execute(
            dialect.insert(audit_checkpoints).values(**row).on_conflict_do_nothing()
        ).rowcount
        if not written:
            stored = conn.execute(
                select(audit_checkpoints).where(
                    audit_checkpoints.c.seq == tip_seq, audit_checkpoints.c.key_id == key.key_id
                )
            ).first()
            if stored is not None:
                checkpoint = _from_row(stored)
    _publish(engine, witnesses, checkpoint, frontier.to_hex(), prev_cp)
    return checkpoint


def _anchor(key: AuditKey, previous: Any, witnesses: Sequence[Witness]) -> tuple[Checkpoint, Frontier] | None:
    """The newest checkpoint by ``key`` the next one must extend, with its verified frontier."""
    from interlock._internal.audit.witness import witness_records

    candidates: list[tuple[Checkpoint, list[str] | None, str]] = []
    if previous is not None:
        candidates.append((_from_row(previous), list(previous.frontier), "the database"))
    for record in witness_records(witnesses):
        if record.checkpoint.key_id == key.key_id:
            candidates.append((record.checkpoint, record.frontier, record.source))
    if not candidates:
        return None
    cp, hexes, source = max(candidates, key=lambda c: c[0].seq)
    try:
        frontier = Frontier.from_hex(cp.seq, hexes or [])
    except ValueError:
        frontier = None
    if not cp.verify(key.public) or frontier is None or frontier.root().hex() != cp.merkle_root:
        raise AuditIntegrityError(
            f"checkpoint {cp.seq} does not verify with the audit key ({source}); it was altered",
            details={"checkpoint": cp.seq, "problem": "altered"},
        )
    return cp, frontier


def _publish(
    engine: Engine,
    witnesses: Sequence[Witness],
    checkpoint: Checkpoint,
    frontier: list[str],
    previous: Checkpoint | None,
) -> None:
    from interlock._internal.audit.witness import HttpWitness, WitnessRecord

    if not witnesses:
        return
    link = None
    if previous is not None and any(isinstance(w, HttpWitness) for w in witnesses):
        tree = MerkleTree(leaf_hash(h) for h in event_hashes(engine, upto=checkpoint.seq))
        link = {
            "seq": previous.seq,
            "merkle_root": previous.merkle_root,
            "consistency": [p.hex() for p in consistency_proof(tree, previous.seq)],
        }
    record = WitnessRecord(checkpoint, frontier, "this server", link)
    failures: list[InterlockError] = []
    for witness in witnesses:
        try:
            witness.publish(record)
        except AuditIntegrityError:
            raise
        except InterlockError as exc:
            failures.append(exc)
    if failures:
        raise StorageError(
            f"checkpoint {checkpoint.seq} is stored, but " + "; ".join(f.message for f in failures),
            code="witness_unavailable",
            details={"checkpoint": checkpoint.seq},
        )


def maybe_checkpoint(
    engine: Engine,
    key: AuditKey,
    *,
    every_events: int = 1000,
    every_s: float = 3600,
    now: float | None = None,
    witnesses: Sequence[Witness] = (),
) -> Checkpoint | None:
    """Write a checkpoint when ``every_events`` events or ``every_s`` seconds have passed since the last.

    Cheap when there is nothing to do (two indexed reads), so a server can call it on a timer or
    after appends. Returns the new checkpoint, or ``None``.
    """
    at = time.time() if now is None else now
    with reading(engine) as conn:
        tip = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == HEAD_ID)).scalar()
        last = conn.execute(
            select(audit_checkpoints.c.seq, audit_checkpoints.c.ts)
            .where(audit_checkpoints.c.key_id == key.key_id)
            .order_by(audit_checkpoints.c.seq.desc())
            .limit(1)
        ).first()
    tip_seq = int(tip or 0)
    if tip_seq == 0:
        return None
    if last is not None:
        behind = tip_seq - int(last[0])
        if behind <= 0 or (behind < every_events and at - float(last[1]) < every_s):
            return None
    return write_checkpoint(engine, key, now=at, witnesses=witnesses)


def covering_checkpoint(
    engine: Engine, key: AuditKey, seq: int, *, witnesses: Sequence[Witness] = ()
) -> Checkpoint:
    """A checkpoint by ``key`` that covers event ``seq``: the latest one, or a fresh one if it falls short."""
    latest = latest_checkpoint(engine, key_id=key.key_id)
    if latest is not None and latest.seq >= seq and latest.verify(key.public):
        return latest
    return write_checkpoint(engine, key, witnesses=witnesses)


def stored_checkpoints(engine: Engine) -> list[tuple[Checkpoint, list[str]]]:
    """Every checkpoint in the database with its stored frontier, by seq then key id. Not verified."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(audit_checkpoints).order_by(audit_checkpoints.c.seq, audit_checkpoints.c.key_id)
        ).all()
    return [(_from_row(r), list(r.frontier or [])) for r in rows]


def event_hashes(engine: Engine, *, upto: int) -> Iterator[str]:
    """The stored hashes of events 1..upto in order; a gap raises :class:`AuditIntegrityError`."""
    expected = 1
    for seq, _prev, stored_hash, _body in _event_pages(engine, after=0, upto=upto, with_body=False):
        if seq != expected:
            raise _broken(expected, "is missing", "deleted")
        yield stored_hash
        expected += 1
    if expected != upto + 1:
        raise _broken(expected, "is missing", "deleted")


def _event_pages(
    engine: Engine, *, after: int, upto: int, with_body: bool
) -> Iterator[tuple[int, str, str, str]]:
    # Short read transactions per page: on SQLite nothing holds a snapshot while we hash.
    body_col = audit_events.c.body if with_body else audit_events.c.hash
    query = (
        select(audit_events.c.seq, audit_events.c.prev_hash, audit_events.c.hash, body_col)
        .order_by(audit_events.c.seq)
        .limit(_PAGE)
    )
    while after < upto:
        with reading(engine) as conn:
            rows = conn.execute(query.where(audit_events.c.seq > after, audit_events.c.seq <= upto)).all()
        if not rows:
            return
        for row in rows:
            yield int(row[0]), str(row[1]), str(row[2]), str(row[3])
        after = int(rows[-1][0])


def _latest_row(conn: Connection, key_id: str | None) -> Any:
    query = select(audit_checkpoints)
    if key_id is not None:
        query = query.where(audit_checkpoints.c.key_id == key_id)
        top = select(func.max(audit_checkpoints.c.seq)).where(audit_checkpoints.c.key_id == key_id)
    else:
        top = select(func.max(audit_checkpoints.c.seq))
    return conn.execute(query.where(audit_checkpoints.c.seq == top.scalar_subquery()).limit(1)).first()


def _from_row(row: Any) -> Checkpoint:
    return Checkpoint(
        seq=int(row.seq),
        tip_hash=str(row.tip_hash),
        merkle_root=str(row.merkle_root),
        ts=float(row.ts),
        key_id=str(row.key_id),
        signature=str(row.signature),
        type=str(row.type) if getattr(row, "type", None) else CHECKPOINT_TYPE,
    )


def _broken(seq: int, what: str, problem: str) -> AuditIntegrityError:
    return AuditIntegrityError(
        f"audit event {seq} {what}; run `interlock audit verify` before checkpointing",
        details={"seq": seq, "problem": problem},
    )


__all__ = [
    "CHECKPOINT_TYPE",
    "CHECKPOINT_TYPE_V1",
    "EMPTY_ROOT",
    "Checkpoint",
    "Frontier",
    "MerkleTree",
    "consistency_proof",
    "covering_checkpoint",
    "event_hashes",
    "latest_checkpoint",
    "leaf_hash",
    "maybe_checkpoint",
    "node_hash",
    "sign_checkpoint",
    "stored_checkpoints",
    "subtree_root",
    "verify_consistency",
    "verify_inclusion",
    "write_checkpoint",
]
