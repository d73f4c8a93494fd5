"""Canonical JSON: the one byte form that is hashed, signed and compared everywhere."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN or infinities (they have no JSON form)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
    ).encode("utf-8")


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite number")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_value(value: Any) -> str:
    """SHA-256 of a value's canonical JSON: the argument hash approvals and decisions bind to."""
    return sha256_hex(canonical_json(value))


__all__ = ["canonical_json", "hash_value", "sha256_hex"]
