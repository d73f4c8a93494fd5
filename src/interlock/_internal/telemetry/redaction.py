"""Redact before storing: secrets and PII are masked before the database, audit log or traces see
a payload. Hashes are taken of the original values first, so redaction never weakens binding."""

from __future__ import annotations

import re
from typing import Any

MASK = "[REDACTED]"

# Keys whose values are secrets whatever they look like.
_SECRET_KEYS = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[_-]?key|apikey|authorization|auth|credential|private[_-]?key"
    r"|session|cookie|client[_-]?secret|access[_-]?key|signature)$",
    re.IGNORECASE,
)

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "private_key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}")),
    ("aws_key", re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("api_key", re.compile(r"\b(sk|pk|rk|ilsk|ilop|ghp|gho|xox[abpr])[-_][A-Za-z0-9_-]{16,}")),
    ("card", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("us_ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,4})?\b")),
]
_EMAIL = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
_MAX_DEPTH = 64


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def redact_text(text: str) -> str:
    if len(text) < 8:
        return text
    for name, pattern in _PATTERNS:
        text = pattern.sub(_card, text) if name == "card" else pattern.sub(f"[REDACTED:{name}]", text)
    # Emails keep their domain and first letter: enough to read a timeline, not to contact.
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[REDACTED:card]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def redact(value: Any, *, extra_secrets: tuple[str, ...] = (), _depth: int = 0) -> Any:
    """A redacted deep copy of a JSON-like value. ``extra_secrets`` are exact strings to mask
    wherever they appear (the injected upstream credentials, for example)."""
    if _depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        return redact_text(mask_secrets(value, extra_secrets))
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            safe_key = key
            if isinstance(key, str):
                names_secret, safe_key = _key_facts(key)
                if names_secret and isinstance(item, str | int | float):
                    out[key] = MASK
                    continue
                # Keys are data too: an upstream may echo a secret back as a key.
                if _depth + 1 > _MAX_DEPTH:
                    safe_key = MASK
                elif extra_secrets:
                    masked = mask_secrets(key, extra_secrets)
                    if masked != key:
                        safe_key = redact_text(masked)
            out[safe_key] = redact(item, extra_secrets=extra_secrets, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, extra_secrets=extra_secrets, _depth=_depth + 1) for v in value]
    return value


# Keys repeat from action to action (a tool's argument and result names), so what redaction makes
# of a key is remembered, within bounds.
_KEY_FACTS: dict[str, tuple[bool, str]] = {}
_KEY_FACTS_MAX = 4096
_KEY_MAX_CHARS = 256


def _key_facts(key: str) -> tuple[bool, str]:
    """Whether ``key`` names a secret, and the key as :func:`redact_text` leaves it."""
    found = _KEY_FACTS.get(key)
    if found is None:
        found = (_SECRET_KEYS.search(key) is not None, redact_text(key))
        if len(key) <= _KEY_MAX_CHARS:
            if len(_KEY_FACTS) >= _KEY_FACTS_MAX:
                _KEY_FACTS.clear()
            _KEY_FACTS[key] = found
    return found


# Patterns that are credentials, not personal data: masked even where personal data may be shown.
_CREDENTIAL_PATTERNS = frozenset({"private_key", "jwt", "bearer", "aws_key", "api_key"})


def redact_credentials(value: Any, *, _depth: int = 0) -> Any:
    """:func:`redact` without the personal-data patterns: secret-named keys and credential shapes
    masked, e-mail addresses, card numbers and the like left as they are. What an approver entitled
    to unmasked values sees (a person never needs a credential to decide)."""
    if _depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        for name, pattern in _PATTERNS:
            if name in _CREDENTIAL_PATTERNS:
                value = pattern.sub(f"[REDACTED:{name}]", value)
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and _SECRET_KEYS.search(key) and isinstance(item, str | int | float):
                out[key] = MASK
                continue
            out[key] = redact_credentials(item, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [redact_credentials(v, _depth=_depth + 1) for v in value]
    return value


def mask_secrets(value: Any, secrets: tuple[str, ...], *, _depth: int = 0) -> Any:
    """Only the exact ``secrets`` masked, in keys and values; nothing else changes."""
    if _depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {
            mask_secrets(k, secrets, _depth=_depth + 1): mask_secrets(v, secrets, _depth=_depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(v, secrets, _depth=_depth + 1) for v in value]
    return value


def redact_payload(value: Any) -> Any:
    """:func:`redact` for a payload that may not be JSON at all (then only its type is kept)."""
    from interlock._internal.audit.canonical import canonical_json

    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return {"unserialisable": type(value).__name__}
    return redact(value)


__all__ = ["MASK", "mask_secrets", "redact", "redact_credentials", "redact_payload", "redact_text"]
