"""Actions, decisions, times and values in words a business owner reads without a glossary.

Everything here returns plain text; the templates escape it. Nothing here ever returns markup.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

VERB_WORDS = {
    "read": "Read",
    "draft": "Draft",
    "create": "Create",
    "update": "Update",
    "send": "Send",
    "publish": "Publish",
    "approve": "Approve",
    "refund": "Refund",
    "invite": "Invite",
    "delete": "Delete",
    "execute": "Run",
}
_SEARCH_WORDS = ("search", "list", "find", "query")

DECISION_WORDS = {
    "allow": "Allowed",
    "deny": "Denied",
    "require_approval": "Sent for approval",
    "escalate": "Escalated to a person",
}
STATUS_WORDS = {
    "executed": "Done",
    "pending_approval": "Waiting for approval",
    "denied": "Denied",
    "invalid": "Rejected as invalid",
    "limited": "Stopped by a limit",
    "failed": "Failed",
    "escalated": "Handed to a person",
    "outcome_unknown": "Outcome unknown: a person checks",
    "recorded": "Recorded",
}
APPROVAL_STATE_WORDS = {
    "pending": "Waiting for a decision",
    "approved": "Approved",
    "rejected": "Rejected",
    "expired": "Expired without a decision",
    "cancelled": "Cancelled",
}
TRAIT_WORDS = {
    "write": "changes data",
    "bulk": "many records at once",
    "pii": "personal data",
    "money": "moves money",
    "irreversible": "cannot be undone",
    "external": "leaves the company",
}
_MAX_SHOWN = 120


def clip(text: str, limit: int = _MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        return clip(str(value), 60)
    return None


def money(arguments: dict[str, Any]) -> str | None:
    amount = arguments.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        return None
    currency = arguments.get("currency")
    text = f"{amount:,.2f}"
    return f"{text} {clip(currency, 10)}" if isinstance(currency, str) and currency else text


def describe_action(verb: str | None, tool: str | None, arguments: Any) -> str:
    """``Refund 120.00 EUR on ticket T-1003``, ``Send email to ana@example.com on ticket T-1001``."""
    tool = tool or "action"
    args = arguments if isinstance(arguments, dict) else {}
    segments = tool.replace("_", " ").replace("-", " ").split(".")
    noun = singular(segments[0]) if segments[0] else "item"
    last = segments[-1] if len(segments) > 1 else ""
    head = VERB_WORDS.get(verb or "", (verb or "Do").capitalize())
    ids = [
        (key[:-3].replace("_", " "), shown)
        for key, value in args.items()
        if key.endswith("_id") and (shown := _scalar(value)) is not None
    ]
    parts = [head]
    cash = money(args)
    if verb == "read" and last in _SEARCH_WORDS:
        parts = [last.capitalize(), segments[0]]
        query = _scalar(args.get("query"))
        if query is not None:
            parts.append(f"for “{query}”")
    elif cash is not None:
        parts.append(cash)
    else:
        match = next((item for item in ids if item[0] == noun), None)
        if match is not None:
            parts.append(f"{noun} {match[1]}")
            ids.remove(match)
        else:
            parts.append(noun)
    recipient = _scalar(args.get("to"))
    if recipient is not None:
        parts.append(f"to {recipient}")
    parts.extend(f"on {label} {value}" for label, value in ids)
    text = " ".join(parts)
    fields = args.get("fields")
    if isinstance(fields, dict) and fields:
        changes = ", ".join(f"{k} → {clip(value_text(v), 40)}" for k, v in fields.items())
        text += f" ({changes})"
    return clip(text, 240)


def value_text(value: Any) -> str:
    """A value as text: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    except (TypeError, ValueError):
        return repr(value)


# How deep and how long a nested value is drawn as lists; what lies beyond is summarised as text.
_MAX_NESTING = 6
_MAX_ELEMENTS = 50


@dataclass(frozen=True, slots=True)
class Shown:
    """A value as the console draws it: a scalar's ``text``, a mapping's ``entries`` (name, value)
    or a sequence's ``elements``, nested. ``text`` is always the one-line form (for lists of rows);
    ``more`` counts the entries or elements left out."""

    text: str
    entries: tuple[tuple[str, Shown], ...] | None = None
    elements: tuple[Shown, ...] | None = None
    more: int = field(default=0)

    @property
    def nested(self) -> bool:
        return self.entries is not None or self.elements is not None

    def __str__(self) -> str:
        return self.text


def shown(value: Any, *, _depth: int = 0) -> Shown:
    """``value`` as nested, readable lists: objects as name/value lists, arrays as bullet lists."""
    text = value_text(value)
    if _depth >= _MAX_NESTING or not isinstance(value, dict | list | tuple) or not value:
        return Shown(text=text)
    if isinstance(value, dict):
        pairs = list(value.items())
        entries = tuple((str(k), shown(v, _depth=_depth + 1)) for k, v in pairs[:_MAX_ELEMENTS])
        return Shown(text=text, entries=entries, more=max(0, len(pairs) - _MAX_ELEMENTS))
    elements = tuple(shown(v, _depth=_depth + 1) for v in value[:_MAX_ELEMENTS])
    return Shown(text=text, elements=elements, more=max(0, len(value) - _MAX_ELEMENTS))


def argument_items(arguments: Any) -> list[tuple[str, Shown]]:
    """Top-level arguments as (name, value) pairs, in the agent's order; nested values stay nested."""
    if isinstance(arguments, dict):
        return [(str(k), shown(v)) for k, v in arguments.items()]
    if arguments is None:
        return []
    return [("value", shown(arguments))]


def safe_link(url: Any) -> str | None:
    """``url`` if it is an absolute http(s) URL, else None (shown as text, never as a link)."""
    if not isinstance(url, str) or len(url) > 2000 or any(c in url for c in "\x00\r\n\t "):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def fmt_span(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``, ``2 d 4 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def duration(ms: float | None) -> str:
    """A step's duration: ``8 ms``, ``420 ms``, ``1.8 s``, ``2 min``; empty when not measured."""
    if ms is None or not math.isfinite(ms) or ms < 0:
        return ""
    if ms < 1:
        return "under 1 ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    return fmt_span(ms / 1000)


def age(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "—"
    return fmt_span((time.time() if now is None else now) - ts)


def expires_in(ts: float | None, now: float | None = None) -> str:
    if ts is None:
        return "never"
    left = ts - (time.time() if now is None else now)
    return "expired" if left <= 0 else f"in {fmt_span(left)}"


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def system_of(tool: str | None, upstream: Any = None) -> str:
    """Which system an action touches: the MCP server, the HTTP host, or the tool's first name part."""
    kind = getattr(upstream, "kind", None)
    if kind == "mcp":
        return str(upstream.server)
    if kind == "http":
        host = urlsplit(str(upstream.url)).hostname
        if host:
            return host
    return (tool or "unknown").split(".")[0]


__all__ = [
    "APPROVAL_STATE_WORDS",
    "DECISION_WORDS",
    "STATUS_WORDS",
    "TRAIT_WORDS",
    "VERB_WORDS",
    "Shown",
    "age",
    "argument_items",
    "clip",
    "describe_action",
    "duration",
    "expires_in",
    "fmt_span",
    "fmt_time",
    "iso_time",
    "money",
    "safe_link",
    "shown",
    "singular",
    "system_of",
    "usd",
    "value_text",
]
