"""Read caches and value limits in the manifest: what is accepted, and errors naming file:line."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from conftest import SUPPORT_TRIAGE
from interlock._internal.manifest.loader import load_manifest_text
from interlock.exceptions import ManifestError


def tool(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in data["tools"] if t["name"] == name)


def dump(edit: Any) -> str:
    data = yaml.safe_load(SUPPORT_TRIAGE.read_text())
    edit(data)
    return yaml.safe_dump(data, sort_keys=False)


def error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest_text(text, file="wf.yaml", base_dir=SUPPORT_TRIAGE.parent)
    return info.value


def line_of(text: str, needle: str, after: str | None = None) -> int:
    lines = text.splitlines()
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines) if i >= start and needle in line) + 1


def test_the_reference_manifest_declares_a_cache_and_value_limits() -> None:
    loaded = load_manifest_text(SUPPORT_TRIAGE.read_text(), base_dir=SUPPORT_TRIAGE.parent)
    get = loaded.manifest.tool("tickets.get")
    assert get is not None
    assert get.cache is not None
    assert (get.cache.ttl_s, get.cache.scope, get.cache.key) == (300, "workflow", ["ticket_id"])
    assert get.cache.invalidated_by[0].tool == "tickets.update"
    ids = [v.id for v in loaded.manifest.budgets.value_limits]
    assert ids == ["refunds-per-ticket-day", "refunds-per-workflow-day"]


def test_a_non_idempotent_tool_cannot_be_cached() -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "payments.refund")["cache"] = {"ttl_s": 60}

    text = dump(edit)
    err = error(text)
    assert err.field == "tools[6].cache"
    assert err.line == line_of(text, "cache:", after="name: payments.refund")
    assert "is not idempotent: only an idempotent read may be cached" in err.reason


def test_an_idempotent_write_cannot_be_cached() -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "tickets.update").update(idempotent=True, cache={"ttl_s": 60})

    err = error(dump(edit))
    assert err.field == "tools[4].cache"
    assert "only 'read' tools may be cached" in err.reason


@pytest.mark.parametrize(
    ("cache", "field", "message"),
    [
        ({"ttl_s": 0}, "tools[1].cache.ttl_s", "must be greater than 0"),
        ({"ttl_s": 5, "scope": "tenant"}, "tools[1].cache.scope", "expected one of run, workflow"),
        ({"ttl_s": 5, "key": ["ticket"]}, "tools[1].cache.key[0]", "unknown argument 'ticket'"),
        (
            {"ttl_s": 5, "key": ["ticket_id"], "invalidated_by": [{"tool": "tickets.updat"}]},
            "tools[1].cache.invalidated_by[0].tool",
            "did you mean 'tickets.update'?",
        ),
        (
            {"ttl_s": 5, "invalidated_by": [{"tool": "tickets.search"}]},
            "tools[1].cache.invalidated_by[0].tool",
            "only a write can make an answer stale",
        ),
        (
            {
                "ttl_s": 5,
                "key": ["ticket_id"],
                "invalidated_by": [{"tool": "tickets.update", "arguments": {}}],
            },
            "tools[1].cache.invalidated_by[0].arguments",
            "missing ticket_id",
        ),
        (
            {
                "ttl_s": 5,
                "key": ["ticket_id"],
                "invalidated_by": [{"tool": "tickets.update", "arguments": {"ticket_id": "ticket"}}],
            },
            "tools[1].cache.invalidated_by[0].arguments.ticket_id",
            "for tool 'tickets.update': unknown argument 'ticket'",
        ),
        (
            {
                "ttl_s": 5,
                "invalidated_by": [{"tool": "tickets.update", "arguments": {"ticket_id": "ticket_id"}}],
            },
            "tools[1].cache.invalidated_by[0].arguments",
            "needs the cache's 'key'",
        ),
    ],
)
def test_cache_errors_name_the_field_and_line(cache: dict[str, Any], field: str, message: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        tool(data, "tickets.get")["cache"] = cache

    err = error(dump(edit))
    assert err.field == field
    assert err.line is not None
    assert message in err.reason, err.reason


LIMIT = {"id": "cap", "tool": "payments.refund", "argument": "amount", "max": 100}


@pytest.mark.parametrize(
    ("limit", "field", "message"),
    [
        (
            {**LIMIT, "argument": "currency"},
            "budgets.value_limits[0].argument",
            "a value limit sums a number",
        ),
        ({**LIMIT, "argument": "amout"}, "budgets.value_limits[0].argument", "unknown argument 'amout'"),
        (
            {**LIMIT, "tool": "payments.refnd"},
            "budgets.value_limits[0].tool",
            "did you mean 'payments.refund'?",
        ),
        (
            {**LIMIT, "per": ["customer_id"]},
            "budgets.value_limits[0].per[0]",
            "unknown argument 'customer_id'",
        ),
        ({**LIMIT, "when": "amount =< 5"}, "budgets.value_limits[0].when", "use '==' to compare"),
        ({**LIMIT, "window": "fortnight"}, "budgets.value_limits[0].window", "expected one of hour, day"),
        ({**LIMIT, "max": -1}, "budgets.value_limits[0].max", "must be at least 0"),
        ({**LIMIT, "maximum": 5}, "budgets.value_limits[0].maximum", "unknown key; did you mean 'max'?"),
    ],
)
def test_value_limit_errors_name_the_field_and_line(limit: dict[str, Any], field: str, message: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["value_limits"] = [limit]

    text = dump(edit)
    err = error(text)
    assert err.field == field
    assert err.line is not None
    assert err.line > line_of(text, "value_limits:")
    assert message in err.reason, err.reason


def test_value_limit_ids_are_unique() -> None:
    def edit(data: dict[str, Any]) -> None:
        data["budgets"]["value_limits"] = [LIMIT, {**LIMIT, "max": 5}]

    err = error(dump(edit))
    assert err.field == "budgets.value_limits[1].id"
    assert "duplicate value limit id 'cap'" in err.reason
