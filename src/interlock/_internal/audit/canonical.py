"""Canonical JSON: the one byte form that is hashed, signed and compared everywhere.

Hash format 2 (the current one) is RFC 8785, the JSON Canonicalization Scheme, as implemented by
the ``rfc8785`` package: keys sorted by UTF-16 code units, no whitespace, numbers in ECMAScript's
shortest form, UTF-8. Any JCS implementation (``JSON.stringify`` over sorted keys in a browser or
Node.js) reproduces these bytes, which is what lets a third party verify hashes and signatures.

For speed, values whose compact, key-sorted JSON is already byte-identical to JCS (no float below
1e-4, no integral float, no key outside the Basic Multilingual Plane, integers within I-JSON's
+-2**53) are written by orjson (the standard library's C encoder where orjson refuses a value it
accepts: a lone surrogate, nesting deeper than orjson goes); everything else goes through
``rfc8785``. Tests hold all three to the same bytes.

Integers beyond +-(2**53 - 1) have no exact JCS form; they are written as their exact decimal
digits (the legacy form below), so distinct values never share a hash. The format document says so.

Hash format 1 (:func:`legacy_canonical_json`) is what logs written before it used: Python's
``json.dumps`` with sorted keys and compact separators. For almost every real event the two forms
are the same bytes; the migration to format 2 relabels those events and keeps the rest as format 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import orjson
import rfc8785

HASH_FORMAT = 2
_INT_LIMIT = 2**53 - 1
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_SORTED = orjson.OPT_SORT_KEYS


def _plain_bytes(value: Any) -> bytes:
    """The JSON of a value :func:`_plain` accepts, which is its JCS form."""
    try:
        return orjson.dumps(value, option=_SORTED)
    except TypeError:  # a lone surrogate or deep nesting: refused, or written, as before
        return _dumps(value).encode("utf-8")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` (sets become sorted lists, tuples lists).

    Raises ``ValueError`` for NaN and infinities (no JSON form) and ``TypeError`` for values that
    are not JSON at all.
    """
    if _plain(value):  # most values: no sets or tuples to normalise, nothing JCS writes otherwise
        return _plain_bytes(value)
    value = _normalise(value)
    if _plain(value):
        return _plain_bytes(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.IntegerDomainError:
        return legacy_canonical_json(value)
    except rfc8785.FloatDomainError as exc:
        raise ValueError(f"non-finite number: {exc}") from exc
    except rfc8785.CanonicalizationError as exc:
        raise TypeError(str(exc)) from exc


def plain_canonical_text(value: Any) -> str | None:
    """The canonical JSON text of ``value`` when it is already in the form readers get back (no
    sets or tuples, nothing JCS writes differently from the standard encoder), else None. Same
    text as :func:`canonical_json`, without the bytes round trip."""
    if not _plain(value):
        return None
    try:
        return orjson.dumps(value, option=_SORTED).decode("utf-8")
    except TypeError:  # a lone surrogate or deep nesting: as the standard encoder writes it
        return _dumps(value)


def is_json(value: Any) -> bool:
    """Whether ``value`` has a canonical JSON form (what :func:`canonical_json` does not refuse)."""
    if _plain(value):
        return True
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return False
    return True


def legacy_canonical_json(value: Any) -> bytes:
    """Hash format 1: sorted keys, no whitespace, UTF-8, no NaN or infinities."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
    ).encode("utf-8")


def is_canonical(body: str, parsed: Any, *, hash_format: int) -> bool:
    """Whether ``body`` is exactly the canonical form (of ``hash_format``) of what it parses to."""
    try:
        encoded = canonical_json(parsed) if hash_format >= 2 else legacy_canonical_json(parsed)
    except (TypeError, ValueError):
        return False
    return encoded == body.encode("utf-8", "surrogatepass")


def _normalise(value: Any) -> Any:
    """Sets to sorted lists and tuples to lists, recursively; other values unchanged."""
    if isinstance(value, dict):
        if any(isinstance(v, (dict, list, tuple, set, frozenset)) for v in value.values()):
            return {k: _normalise(v) for k, v in value.items()}
        return value
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_normalise(v) for v in value)
    return value


def _plain(value: Any) -> bool:
    """Whether the standard encoder writes ``value`` exactly as RFC 8785 does."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return bool(-_INT_LIMIT <= value <= _INT_LIMIT)
    if kind is float:
        # Here both print the same shortest round-trip digits without an exponent (repr switches to
        # one below 1e-4; ECMAScript below 1e-6). Integral floats print "2" there and "2.0" here;
        # non-integral floats are all below 2**52, where repr has no exponent either.
        return abs(value) >= 1e-4 and not value.is_integer()
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str or not (k.isascii() or _bmp(k)):
                return False
            kv = type(v)
            if kv is str or kv is bool or v is None:
                continue
            if not _plain(v):
                return False
        return True
    if kind is list:
        for v in value:
            kv = type(v)
            if kv is str or kv is bool or v is None:
                continue
            if not _plain(v):
                return False
        return True
    return False


def _bmp(key: str) -> bool:
    # UTF-16 and code-point order agree unless a key holds a character above U+FFFF.
    return key.isascii() or all(ord(c) < 0x10000 for c in key)


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


__all__ = [
    "HASH_FORMAT",
    "canonical_json",
    "hash_value",
    "is_canonical",
    "is_json",
    "legacy_canonical_json",
    "plain_canonical_text",
    "sha256_hex",
]
