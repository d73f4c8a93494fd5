"""Witnesses: copies of signed checkpoints kept outside the database.

Someone who can rewrite the database can also delete its checkpoints and sign nothing new; they
cannot reach a copy held elsewhere. Each new checkpoint is published to the witnesses configured in
settings:

- a **directory** (``audit.witness_dir``, e.g. a mount with append-only or object-lock semantics):
  one file per checkpoint, ``checkpoint-<seq>-<key_id>.json``, created exclusively and never
  rewritten. A different checkpoint for a seq the directory already holds is refused: that is a
  fork of the history, and publishing it would hide the first one.
- an **HTTP endpoint** (``audit.witness_url``): the same record POSTed as JSON, with the RFC 9162
  consistency proof from the previous checkpoint, so the receiver can check that the new one
  extends what it already holds without reading the log.

A record (file or POST body) is ``{"checkpoint": {...}, "frontier": [...], "previous": {"seq": m,
"merkle_root": ..., "consistency": [...]} | null}``; only ``checkpoint`` is signed, the rest is
checkable against it. ``audit verify`` reads the directory and holds the database to every
checkpoint in it; ``audit verify --trusted-checkpoint FILE`` does the same for one record (or bare
checkpoint) kept anywhere else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from interlock._internal.audit.checkpoints import Checkpoint
from interlock._internal.settings import AuditSettings
from interlock.exceptions import AuditIntegrityError, ConfigError, StorageError


@dataclass(frozen=True, slots=True)
class WitnessRecord:
    """A checkpoint as a witness holds it, and where it came from (for messages)."""

    checkpoint: Checkpoint
    frontier: list[str] | None
    source: str
    previous: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint.as_dict(), "frontier": self.frontier, "previous": self.previous}


class Witness(Protocol):
    name: str

    def publish(self, record: WitnessRecord) -> None: ...


class DirectoryWitness:
    """An append-only directory of signed checkpoint files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"witness directory {path}"

    def file_for(self, cp: Checkpoint) -> Path:
        return self.path / f"checkpoint-{cp.seq:012d}-{cp.key_id}.json"

    def publish(self, record: WitnessRecord) -> None:
        cp = record.checkpoint
        target = self.file_for(cp)
        data = json.dumps(record.as_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            held = load_record(target)
            if held.checkpoint.signature != cp.signature or held.checkpoint.merkle_root != cp.merkle_root:
                raise AuditIntegrityError(
                    f"{self.name} already holds a different checkpoint {cp.seq} ({target.name}): "
                    "the log was forked; run `interlock audit verify`",
                    details={"checkpoint": cp.seq, "problem": "altered"},
                ) from None
            return
        except OSError as exc:
            raise StorageError(
                f"cannot write to {self.name}: {exc.strerror}", code="witness_unavailable"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise StorageError(
                f"cannot write to {self.name}: {exc.strerror}", code="witness_unavailable"
            ) from exc

    def records(self) -> list[WitnessRecord]:
        """Every checkpoint the directory holds, by seq. Unreadable files are errors, not skipped:
        a witness that silently drops files would let a rewrite pass."""
        if not self.path.is_dir():
            return []
        found = [load_record(p) for p in sorted(self.path.glob("checkpoint-*.json"))]
        return sorted(found, key=lambda r: (r.checkpoint.seq, r.checkpoint.key_id))


class HttpWitness:
    """POSTs each checkpoint record as JSON; any 2xx answer means the witness holds it."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.name = f"witness endpoint {url}"

    def publish(self, record: WitnessRecord) -> None:
        try:
            response = httpx.post(self.url, json=record.as_dict(), timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise StorageError(
                f"{self.name} did not take checkpoint {record.checkpoint.seq}: {exc.__class__.__name__}",
                code="witness_unavailable",
            ) from exc
        if not response.is_success:
            raise StorageError(
                f"{self.name} refused checkpoint {record.checkpoint.seq}: HTTP {response.status_code}",
                code="witness_unavailable",
            )


def witnesses_from_settings(settings: AuditSettings) -> list[Witness]:
    found: list[Witness] = []
    if settings.witness_dir is not None:
        found.append(DirectoryWitness(settings.witness_dir))
    if settings.witness_url:
        found.append(HttpWitness(settings.witness_url, timeout_s=settings.witness_timeout_s))
    return found


def witness_records(witnesses: Sequence[Witness]) -> list[WitnessRecord]:
    """The checkpoints readable witnesses (directories) hold."""
    records: list[WitnessRecord] = []
    for witness in witnesses:
        if isinstance(witness, DirectoryWitness):
            records.extend(witness.records())
    return records


def load_record(path: Path) -> WitnessRecord:
    """Read a witness file, or a bare checkpoint as ``audit checkpoint --json`` prints it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read checkpoint file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"checkpoint file {path} is not JSON: {exc}") from exc
    return parse_record(data, source=str(path))


def parse_record(data: Any, *, source: str) -> WitnessRecord:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a checkpoint record is a JSON object")
    body = data.get("checkpoint", data)
    try:
        cp = Checkpoint.from_dict(body if isinstance(body, dict) else {})
    except ValueError as exc:
        raise ConfigError(f"{source}: not a checkpoint: {exc}") from exc
    frontier = data.get("frontier")
    if frontier is not None and not (
        isinstance(frontier, list) and all(isinstance(h, str) for h in frontier)
    ):
        frontier = None
    previous = data.get("previous") if isinstance(data.get("previous"), dict) else None
    return WitnessRecord(cp, frontier, source, previous)


__all__ = [
    "DirectoryWitness",
    "HttpWitness",
    "Witness",
    "WitnessRecord",
    "load_record",
    "parse_record",
    "witness_records",
    "witnesses_from_settings",
]
