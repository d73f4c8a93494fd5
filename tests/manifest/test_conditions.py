"""Argument conditions: parsing, schema checks, Python evaluation, and Cedar output that agrees."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlock._internal.manifest.conditions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Condition,
    cedar_decimal,
    cedar_string,
    parse_condition,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "amount": {"type": "number"},
        "limit": {"type": "integer"},
        "currency": {"enum": ["USD", "EUR"]},
        "note": {"type": "string"},
        "urgent": {"type": "boolean"},
        "fields": {
            "type": "object",
            "properties": {
                "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
                "count": {"type": "integer"},
                "score": {"type": "number"},
                "in": {"type": "string"},
                "first-name": {"type": "string"},
            },
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "either": {"type": ["string", "integer"]},
        "single": {"type": ["integer"]},
        "untyped": {"properties": {"x": {"type": "integer"}}},
        "loose": {},
    },
    "required": ["amount"],
}


def cond(text: str) -> Condition:
    return parse_condition(text, SCHEMA)


# --- parsing ---------------------------------------------------------------------------------------


def test_precedence_not_and_or() -> None:
    c = cond('not urgent == true and limit > 1 or currency == "EUR"')
    # (not (urgent == true) and limit > 1) or currency == "EUR"
    assert c.evaluate({"urgent": False, "limit": 2})
    assert c.evaluate({"currency": "EUR", "urgent": True})
    assert not c.evaluate({"urgent": True, "limit": 2})


def test_parentheses_change_grouping() -> None:
    c = cond('limit > 1 and (currency == "EUR" or urgent == true)')
    assert c.evaluate({"limit": 2, "urgent": True})
    assert not c.evaluate({"limit": 0, "urgent": True})


def test_paths_in_order_without_duplicates() -> None:
    c = cond('fields.priority == "high" or amount > 5 and fields.priority != "low"')
    assert c.paths == ("fields.priority", "amount")


def test_str_is_source_text() -> None:
    assert str(cond("amount > 50")) == "amount > 50"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty condition (at column 1)"),
        ("   ", "empty condition"),
        (
            "amount >",
            'expected a value (number, "string", true or false), found the end of the condition '
            "(at column 9)",
        ),
        ("amount = 5", "use '==' to compare (at column 8)"),
        ("amount > 5 && limit < 3", "use 'and' (at column 12)"),
        ("amount > 5 || limit < 3", "use 'or'"),
        ("!urgent", "use 'not' or '!='"),
        ("note == 'x'", "strings are written in double quotes"),
        ("bogus > 1", "unknown argument 'bogus': the tool's input has no field 'bogus' (at column 1)"),
        ("fields.bogus == 1", "unknown argument 'fields.bogus': fields has no field 'bogus'"),
        ("amount.cents > 1", "unknown argument 'amount.cents': 'amount' is not declared 'type: object'"),
        ('currency > "USD"', "'>' needs a number, but 'currency' is a string (at column 10)"),
        ("urgent < true", "'<' needs a number, but 'urgent' is a boolean"),
        ('currency == "GBP"', "\"GBP\" is not an allowed value of 'currency' (USD, EUR) (at column 13)"),
        ('currency in ["USD", "GBP"]', '"GBP" is not an allowed value'),
        ("amount > 1.00001", "1.00001 has more than 4 decimal places (at column 10)"),
        ("amount > 922337203685478", "outside the range"),
        ("limit > 1.5", "'limit' is an integer, but 1.5 is not a whole number"),
        ("limit > 9223372036854775808", "outside the 64-bit integer range"),
        ('limit == "5"', "'limit' is an integer, not a string"),
        ("note == 5", "'note' is a string, not a number"),
        ("note == true", "'note' is a string, not a boolean"),
        ('urgent == "yes"', "'urgent' is a boolean, not a string"),
        ("tags == 1", "'tags' has type array"),
        ("either == 1", "declares a list of types (string, integer)"),
        ("single == 1", "declares a list of types (integer)"),
        ("untyped.x == 1", "'untyped' is not declared 'type: object'"),
        ("loose == 1", "has type unspecified"),
        ("fields == 1", "'fields' has type object"),
        ("((amount > 1)", "expected ')', found the end of the condition"),
        ("amount > 1)", "unmatched ')' (at column 11)"),
        ("amount > 1 limit", "expected 'and', 'or' or the end, found 'limit' (at column 12)"),
        ("amount 5", "expected a comparison operator after 'amount', found '5' (at column 8)"),
        ("5 > amount", "expected an argument path, found '5' (at column 1)"),
        ("and amount > 1", "expected an argument path, found 'and'"),
        ('currency in "USD"', "expected '[' to start the list after 'in'"),
        ('currency in ["USD" "EUR"]', "expected ',' or ']'"),
        ("currency in []", "expected a value"),
        ('note == "abc', "unterminated string (at column 9)"),
        ('note == "a\\qb"', "unknown escape '\\q'"),
        ("amount > 1e3", "found 'e3'"),
        ("amount > #", "unexpected character '#'"),
    ],
)
def test_errors_name_the_column(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        cond(text)
    assert fragment in str(info.value)


def test_length_limit() -> None:
    text = " or ".join(["amount > 1"] * 200)
    assert len(text) > MAX_LENGTH
    with pytest.raises(ValueError, match="longer than 1000 characters"):
        cond(text)


def test_depth_limit_parentheses_and_not() -> None:
    ok = "(" * MAX_DEPTH + "amount > 1" + ")" * MAX_DEPTH
    assert cond(ok).evaluate({"amount": 2})
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        cond("(" * (MAX_DEPTH + 1) + "amount > 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ValueError, match="nested more than 32 levels deep"):
        cond("not " * (MAX_DEPTH + 1) + "amount > 1")


def test_keywords_may_follow_a_dot_in_paths() -> None:
    c = cond('fields.in == "x"')
    assert c.evaluate({"fields": {"in": "x"}})


def test_hyphenated_segment() -> None:
    assert cond('fields.first-name == "Ada"').evaluate({"fields": {"first-name": "Ada"}})


def test_string_escapes() -> None:
    c = cond(r'note == "a\"b\\c\nd\te\r"')
    assert c.evaluate({"note": 'a"b\\c\nd\te\r'})


# --- evaluation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    [
        ("amount > 50", {"amount": 50.5}, True),
        ("amount > 50", {"amount": 50}, False),
        ("amount <= 50", {"amount": 50.0}, True),
        ("amount == 0.1", {"amount": 0.1}, True),  # exact decimal, not binary floating point
        ("amount < 0.3", {"amount": 0.1 + 0.2}, False),  # 0.30000000000000004 is not below 0.3
        ("amount >= -2.5", {"amount": -2.5}, True),
        ("limit == 3", {"limit": 3.0}, True),  # JSON Schema counts 3.0 as an integer
        ("limit == 3", {"limit": 3.5}, False),
        ("limit == 1", {"limit": True}, False),  # a boolean is not a number
        ("amount == 1", {"amount": True}, False),
        ("urgent == true", {"urgent": 1}, False),
        ("urgent != false", {"urgent": True}, True),
        ('currency in ["USD", "EUR"]', {"currency": "EUR"}, True),
        ('currency in ["USD"]', {"currency": "EUR"}, False),
        ("limit in [1, 2, 3]", {"limit": 2}, True),
        ("amount in [1.5, 2]", {"amount": 2}, True),
        ('fields.priority == "urgent"', {"fields": {"priority": "urgent"}}, True),
        ('note == "5"', {"note": 5}, False),
    ],
)
def test_evaluate(text: str, args: dict[str, Any], expected: bool) -> None:
    assert cond(text).evaluate(args) is expected


@pytest.mark.parametrize(
    "text",
    [
        "limit > 1",
        "limit != 1",
        'fields.priority != "low"',
        'fields.priority == "low"',
        'currency in ["USD", "EUR"]',
        "fields.count != 0",
    ],
)
@pytest.mark.parametrize("args", [{}, {"fields": {}}, {"fields": None}, {"fields": "x"}, {"limit": None}])
def test_absent_means_false_even_for_not_equal(text: str, args: dict[str, Any]) -> None:
    c = cond(text)
    assert c.evaluate(args) is False
    assert cond(f"not ({text})").evaluate(args) is True


# --- Cedar -----------------------------------------------------------------------------------------


def test_cedar_text_guards_every_level() -> None:
    assert cond('fields.priority == "urgent"').to_cedar() == (
        "(context.args has fields && context.args.fields has priority && "
        'context.args.fields.priority == "urgent")'
    )
    assert cond("amount <= 50").to_cedar("context.a") == (
        '(context.a has amount && context.a.amount.lessThanOrEqual(decimal("50.0")))'
    )
    assert cond('fields.in == "x"').to_cedar() == (
        '(context.args has fields && context.args.fields has "in" && context.args.fields["in"] == "x")'
    )
    assert cond('not (limit > 1 or currency in ["USD"])').to_cedar() == (
        "!((context.args has limit && context.args.limit > 1) || "
        '(context.args has currency && ["USD"].contains(context.args.currency)))'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (50, "50.0"),
        (Decimal("0.10"), "0.10"),
        (-2.5, "-2.5"),
        (Decimal("-0"), "0.0"),
        (1.25, "1.25"),
        (Decimal("1.000000"), "1.0000"),
        (922337203685477, "922337203685477.0"),
    ],
)
def test_cedar_decimal(value: Any, text: str) -> None:
    assert cedar_decimal(value) == text


@pytest.mark.parametrize("value", [0.00001, 922337203685478, float("inf"), float("nan"), True])
def test_cedar_decimal_refuses_what_cedar_cannot_hold(value: Any) -> None:
    with pytest.raises(ValueError):
        cedar_decimal(value)


def test_cedar_string_escapes_everything_risky() -> None:
    assert cedar_string('a"b\\c') == '"a\\"b\\\\c"'
    assert cedar_string("x\ny\u2028\x00") == '"x\\u{a}y\\u{2028}\\u{0}"'
    assert cedar_string("é😀") == '"\\u{e9}\\u{1f600}"'


def _authorized(expr: str, args: dict[str, Any]) -> bool:
    policy = f"permit(principal, action, resource) when {{ {expr} }};"
    request = {
        "principal": 'User::"agent"',
        "action": 'Action::"call"',
        "resource": 'Tool::"t"',
        "context": {"args": args},
    }
    result = cedarpy.is_authorized(request, policy, [])
    assert result.decision != cedarpy.Decision.NoDecision, result.diagnostics.errors
    assert not result.diagnostics.errors, (expr, args, result.diagnostics.errors)
    return result.decision == cedarpy.Decision.Allow


def _decimal(value: Any) -> dict[str, Any]:
    return {"__extn": {"fn": "decimal", "arg": cedar_decimal(value)}}


def _cedar_args(args: dict[str, Any], schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    """Arguments as the policy compiler puts them into the context: numbers become decimals."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        field = schema["properties"][key]
        if field.get("type") == "number":
            out[key] = _decimal(value)
        elif field.get("type") == "object":
            out[key] = _cedar_args(value, field)
        else:
            out[key] = value
    return out


INJECTIONS = [
    'x" || true || "',
    '"',
    "\\",
    '\\"',
    "a\nb",
    '" }; permit(principal, action, resource); //',
    "\\u{22}",
    "\x00\x1f\x7f",
    "line\u2028sep",
    "😀 é",
    "*",
]


@pytest.mark.parametrize("value", INJECTIONS)
def test_string_literals_cannot_break_out_of_cedar(value: str) -> None:
    literal = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    c = cond(f'note == "{literal}"')
    assert c.evaluate({"note": value})
    assert _authorized(c.to_cedar(), {"note": value})
    assert not _authorized(c.to_cedar(), {"note": value + "x"})
    assert not _authorized(c.to_cedar(), {})


def test_cedar_decimal_comparisons_with_extension_values() -> None:
    c = cond("amount > 50")
    assert _authorized(c.to_cedar(), {"amount": _decimal(120.0)})
    assert not _authorized(c.to_cedar(), {"amount": _decimal(50)})
    assert not _authorized(c.to_cedar(), {})
    d = cond("amount == 50 and fields.score != 1.5")
    assert _authorized(d.to_cedar(), {"amount": _decimal(50.0), "fields": {"score": _decimal(2)}})
    assert not _authorized(d.to_cedar(), {"amount": _decimal(50.0), "fields": {}})


# --- properties ------------------------------------------------------------------------------------

_TOKENS = [
    "amount", "limit", "currency", "note", "urgent", "fields.priority", "fields.in", "fields", "tags",
    "bogus", "(", ")", "[", "]", ",", " and ", " or ", "not ", " in ", "==", "!=", "<", "<=", ">", ">=",
    "=", "!", "&&", '"USD"', '"', "\\", "50", "-1", "1.5", "1.12345", "true", "false", " ", "\n", "é",
]  # fmt: skip


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join)))
def test_random_text_raises_only_value_error(text: str) -> None:
    try:
        c = parse_condition(text, SCHEMA)
    except ValueError:
        return
    # Whatever parses must evaluate on any arguments and produce Cedar text.
    c.evaluate({})
    c.evaluate({"amount": "x", "fields": [1]})
    assert c.to_cedar()


@settings(max_examples=100)
@given(st.text(max_size=50), st.dictionaries(st.text(max_size=5), st.none() | st.integers(), max_size=4))
def test_random_schemas_raise_only_value_error(text: str, schema: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError):
        parse_condition("amount > 1 and " + text, {"properties": schema})


# Random valid conditions and arguments: Python and Cedar must agree on every one.

_NUMBERS = st.sampled_from(["-1", "0", "0.5", "50", "50.0001", "120", "-2.25", "1000000"])
_INTEGERS = st.sampled_from(["-3", "0", "1", "50", "51", "9223372036854775807"])
_STRINGS = st.sampled_from(["", "USD", 'a"b', "x\\y", "multi\nline", "é"])


def _literal(kind: str) -> st.SearchStrategy[str]:
    if kind == "number":
        return _NUMBERS
    if kind == "integer":
        return _INTEGERS
    if kind == "boolean":
        return st.sampled_from(["true", "false"])
    if kind == "currency":
        return st.sampled_from(['"USD"', '"EUR"'])
    if kind == "priority":
        return st.sampled_from(['"low"', '"urgent"'])
    return _STRINGS.map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    )


_FIELDS = {
    "amount": "number",
    "limit": "integer",
    "currency": "currency",
    "note": "string",
    "urgent": "boolean",
    "fields.priority": "priority",
    "fields.count": "integer",
    "fields.score": "number",
    "fields.in": "string",
}


@st.composite
def _comparison(draw: st.DrawFn) -> str:
    path = draw(st.sampled_from(sorted(_FIELDS)))
    kind = _FIELDS[path]
    ops = ["==", "!=", "in"] + (["<", "<=", ">", ">="] if kind in ("number", "integer") else [])
    op = draw(st.sampled_from(ops))
    if op == "in":
        items = draw(st.lists(_literal(kind), min_size=1, max_size=3))
        return f"{path} in [{', '.join(items)}]"
    return f"{path} {op} {draw(_literal(kind))}"


_CONDITIONS = st.recursive(
    _comparison(),
    lambda inner: st.one_of(
        inner.map(lambda c: f"not ({c})"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]} and {t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} or {t[1]}"),
    ),
    max_leaves=6,
)

_ARG_NUMBERS = st.sampled_from([-1, 0, 0.5, 50, 50.0001, 50.0, 120, -2.25, 1000000, 0.0001]) | st.decimals(
    min_value=-1000, max_value=1000, places=4, allow_nan=False, allow_infinity=False
).map(float)
_ARG_INTEGERS = st.sampled_from([-3, 0, 1, 50, 51, 9223372036854775807]) | st.integers(-100, 100)
_ARG_STRINGS = st.sampled_from(["", "USD", 'a"b', "x\\y", "multi\nline", "é", "EUR", "low", "urgent"])


@st.composite
def _args(draw: st.DrawFn) -> dict[str, Any]:
    values = {
        "amount": _ARG_NUMBERS,
        "limit": _ARG_INTEGERS,
        "currency": st.sampled_from(["USD", "EUR"]),
        "note": _ARG_STRINGS,
        "urgent": st.booleans(),
    }
    args: dict[str, Any] = {}
    for name, strategy in values.items():
        if draw(st.booleans()):
            args[name] = draw(strategy)
    if draw(st.booleans()):
        inner = {
            "priority": st.sampled_from(["low", "normal", "high", "urgent"]),
            "count": _ARG_INTEGERS,
            "score": _ARG_NUMBERS,
            "in": _ARG_STRINGS,
        }
        args["fields"] = {name: draw(s) for name, s in inner.items() if draw(st.booleans())}
    return args


@settings(max_examples=300, deadline=None)
@given(_CONDITIONS, _args())
def test_cedar_agrees_with_evaluate(text: str, args: dict[str, Any]) -> None:
    c = cond(text)
    assert _authorized(c.to_cedar(), _cedar_args(args)) == c.evaluate(args), (text, args, c.to_cedar())
