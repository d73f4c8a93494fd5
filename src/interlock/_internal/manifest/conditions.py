"""Argument conditions: the small language of ``when: "amount > 50"``.

Rules, a tool's ``risk_conditions`` and stop rules all speak it. One parsed :class:`Condition` is
evaluated in two places that must agree: here in Python (:meth:`Condition.evaluate`) and inside
Cedar, as text the policy compiler embeds in a ``when`` clause (:meth:`Condition.to_cedar`).

Grammar (``not`` binds tighter than ``and``, ``and`` tighter than ``or``)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | comparison
    comparison := PATH ("==" | "!=" | "<" | "<=" | ">" | ">=") LITERAL
                | PATH "in" "[" LITERAL ("," LITERAL)* "]"
    LITERAL    := NUMBER | STRING | "true" | "false"

``PATH`` is a dotted argument path (``fields.priority``); ``STRING`` is double-quoted with the
escapes ``\\" \\\\ \\n \\r \\t``; ``NUMBER`` is ``-?digits(.digits)?``.

Absent means unknown: when a path is missing from the arguments (an optional field left out) or
holds a value of the wrong type, the comparison is false, for ``!=`` too. ``not`` inverts that,
so ``not amount > 50`` is true when ``amount`` is absent. Cedar output keeps the same meaning by
guarding every attribute access with ``has``.

Conversion contract with the policy compiler, which puts arguments into the Cedar context:

- JSON-schema ``integer`` becomes a Cedar Long. ``3.0`` counts as the integer 3, as in JSON
  Schema; a value outside 64 bits cannot be represented, so deny the action.
- ``number`` becomes a Cedar ``decimal``: build the value with :func:`cedar_decimal`, and deny an
  action whose number needs more than four decimal places, because Cedar cannot represent it
  and rounding could flip a limit.
- Strings and booleans stay themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeAlias

MAX_LENGTH = 1000
MAX_DEPTH = 32

# Cedar's decimal is a 64-bit integer scaled by 10^4; keep a whole-number margin inside it.
DECIMAL_MAX = Decimal(922_337_203_685_477)
DECIMAL_PLACES = 4
LONG_MIN = -(2**63)
LONG_MAX = 2**63 - 1

Kind = Literal["string", "integer", "number", "boolean"]
Op = Literal["==", "!=", "<", "<=", ">", ">=", "in"]
Scalar: TypeAlias = str | int | bool | Decimal

_ORDERING = frozenset({"<", "<=", ">", ">="})
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false"})
_CEDAR_RESERVED = frozenset({"true", "false", "if", "then", "else", "in", "is", "like", "has"})
_CEDAR_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DECIMAL_METHOD = {
    "<": "lessThan",
    "<=": "lessThanOrEqual",
    ">": "greaterThan",
    ">=": "greaterThanOrEqual",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<path>[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*)
    | (?P<op>==|!=|<=|>=|<|>)
    | (?P<punct>[()\[\],])
    | (?P<string>")
    """,
    re.VERBOSE,
)
_HINTS = {
    "=": "use '==' to compare",
    "&": "use 'and'",
    "|": "use 'or'",
    "!": "use 'not' or '!='",
    "'": "strings are written in double quotes",
}
_STRING_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


# --- the tree ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """``path op value``; ``value`` is a tuple for ``in``. Numbers are exact ``Decimal``s."""

    path: tuple[str, ...]
    op: Op
    value: Scalar | tuple[Scalar, ...]
    kind: Kind


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: Literal["and", "or"]
    operands: tuple[Node, ...]


Node: TypeAlias = Comparison | Not | BoolOp


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed, schema-checked argument condition. Build one with :func:`parse_condition`."""

    text: str
    root: Node

    @property
    def paths(self) -> tuple[str, ...]:
        """The dotted argument paths the condition reads, in order of first use."""
        seen: dict[str, None] = {}
        for comparison in _comparisons(self.root):
            seen[".".join(comparison.path)] = None
        return tuple(seen)

    def evaluate(self, args: Mapping[str, Any]) -> bool:
        """Evaluate against validated tool arguments. Absent or mistyped values compare false."""
        return _evaluate(self.root, args)

    def to_cedar(self, prefix: str = "context.args") -> str:
        """The condition as a Cedar expression over the record at ``prefix``."""
        return _to_cedar(self.root, prefix)

    def __str__(self) -> str:
        return self.text


def _comparisons(node: Node) -> Iterator[Comparison]:
    if isinstance(node, Comparison):
        yield node
    elif isinstance(node, Not):
        yield from _comparisons(node.operand)
    else:
        for operand in node.operands:
            yield from _comparisons(operand)


# --- tokenizer -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["number", "path", "keyword", "op", "punct", "string", "end"]
    text: str
    pos: int
    value: str = ""


def _error(message: str, pos: int) -> ValueError:
    return ValueError(f"{message} (at column {pos + 1})")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            hint = _HINTS.get(char)
            raise _error(f"unexpected character {char!r}" + (f"; {hint}" if hint else ""), pos)
        kind = match.lastgroup
        if kind == "string":
            value, end = _read_string(text, pos)
            tokens.append(_Token("string", text[pos:end], pos, value))
            pos = end
            continue
        word = match.group()
        if kind == "number":
            tokens.append(_Token("number", word, pos))
        elif kind == "path":
            if word in _KEYWORDS:
                tokens.append(_Token("keyword", word, pos))
            else:
                tokens.append(_Token("path", word, pos))
        elif kind == "op":
            tokens.append(_Token("op", word, pos))
        elif kind == "punct":
            tokens.append(_Token("punct", word, pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\":
            escape = text[pos + 1] if pos + 1 < len(text) else ""
            if escape not in _STRING_ESCAPES:
                raise _error(f"unknown escape '\\{escape}' in string; use \\\" \\\\ \\n \\r or \\t", pos)
            out.append(_STRING_ESCAPES[escape])
            pos += 2
            continue
        if 0xD800 <= ord(char) <= 0xDFFF:
            # A lone surrogate is not a Unicode scalar value; Cedar would reject the policy.
            raise _error("invalid character in string", pos)
        out.append(char)
        pos += 1
    raise _error("unterminated string", start)


# --- parser --------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, schema: Mapping[str, Any]):
        self.tokens = _tokenize(text)
        self.index = 0
        self.schema = schema
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        token = self.current
        return token.kind == kind and (text is None or token.text == text)

    def expect_punct(self, text: str, what: str) -> None:
        if not self.at("punct", text):
            raise _error(f"expected {what}, found {_describe(self.current)}", self.current.pos)
        self.advance()

    def parse(self) -> Node:
        if self.at("end"):
            raise _error("empty condition", 0)
        node = self.parse_or()
        if not self.at("end"):
            token = self.current
            if token.text == ")":
                raise _error("unmatched ')'", token.pos)
            raise _error(f"expected 'and', 'or' or the end, found {_describe(token)}", token.pos)
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.at("keyword", "or"):
            self.advance()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def parse_and(self) -> Node:
        operands = [self.parse_unary()]
        while self.at("keyword", "and"):
            self.advance()
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def parse_unary(self) -> Node:
        token = self.current
        if token.kind == "keyword" and token.text == "not":
            self.advance()
            with self.nested(token):
                return Not(self.parse_unary())
        if token.kind == "punct" and token.text == "(":
            self.advance()
            with self.nested(token):
                node = self.parse_or()
            self.expect_punct(")", "')'")
            return node
        return self.parse_comparison()

    def nested(self, token: _Token) -> _Depth:
        return _Depth(self, token)

    def parse_comparison(self) -> Comparison:
        token = self.advance()
        if token.kind != "path":
            raise _error(f"expected an argument path, found {_describe(token)}", token.pos)
        path = tuple(token.text.split("."))
        kind, enum = field_kind(self.schema, path, pos=token.pos)
        op_token = self.advance()
        if op_token.kind == "keyword" and op_token.text == "in":
            values = self.parse_list(kind, enum, token.text)
            return Comparison(path, "in", values, kind)
        if op_token.kind != "op":
            raise _error(
                f"expected a comparison operator after '{token.text}', found {_describe(op_token)}",
                op_token.pos,
            )
        op: Op = op_token.text  # type: ignore[assignment]  # the tokenizer only yields valid operators
        if op in _ORDERING and kind not in ("integer", "number"):
            raise _error(f"'{op}' needs a number, but '{token.text}' is {_a(kind)}", op_token.pos)
        value = self.parse_literal(kind, enum, token.text)
        return Comparison(path, op, value, kind)

    def parse_list(self, kind: Kind, enum: tuple[str, ...] | None, name: str) -> tuple[Scalar, ...]:
        self.expect_punct("[", "'[' to start the list after 'in'")
        values = [self.parse_literal(kind, enum, name)]
        while self.at("punct", ","):
            self.advance()
            values.append(self.parse_literal(kind, enum, name))
        self.expect_punct("]", "',' or ']'")
        return tuple(values)

    def parse_literal(self, kind: Kind, enum: tuple[str, ...] | None, name: str) -> Scalar:
        token = self.advance()
        if token.kind == "string":
            if kind != "string":
                raise _error(f"'{name}' is {_a(kind)}, not a string", token.pos)
            if enum is not None and token.value not in enum:
                allowed = ", ".join(enum)
                raise _error(f"{token.text} is not an allowed value of '{name}' ({allowed})", token.pos)
            return token.value
        if token.kind == "keyword" and token.text in ("true", "false"):
            if kind != "boolean":
                raise _error(f"'{name}' is {_a(kind)}, not a boolean", token.pos)
            return token.text == "true"
        if token.kind == "number":
            return _number_literal(token, kind, name)
        raise _error(
            f'expected a value (number, "string", true or false), found {_describe(token)}', token.pos
        )


class _Depth:
    """Counts nesting so a pathological expression cannot exhaust the Python stack."""

    def __init__(self, parser: _Parser, token: _Token):
        self.parser = parser
        self.token = token

    def __enter__(self) -> None:
        self.parser.depth += 1
        if self.parser.depth > MAX_DEPTH:
            raise _error(f"condition nested more than {MAX_DEPTH} levels deep", self.token.pos)

    def __exit__(self, *exc: object) -> None:
        self.parser.depth -= 1


def _a(kind: Kind) -> str:
    return f"an {kind}" if kind == "integer" else f"a {kind}"


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the condition"
    return f"'{token.text}'"


def _number_literal(token: _Token, kind: Kind, name: str) -> Scalar:
    if kind not in ("integer", "number"):
        raise _error(f"'{name}' is {_a(kind)}, not a number", token.pos)
    value = Decimal(token.text)  # the tokenizer only yields plain decimal notation
    if kind == "integer":
        if "." in token.text:
            raise _error(f"'{name}' is an integer, but {token.text} is not a whole number", token.pos)
        number = int(value)
        if not LONG_MIN <= number <= LONG_MAX:
            raise _error(f"{token.text} is outside the 64-bit integer range", token.pos)
        return number
    if "." in token.text and len(token.text.split(".", 1)[1]) > DECIMAL_PLACES:
        raise _error(f"{token.text} has more than {DECIMAL_PLACES} decimal places", token.pos)
    if abs(value) > DECIMAL_MAX:
        raise _error(f"{token.text} is outside the range ±{DECIMAL_MAX}", token.pos)
    return value


def field_kind(
    schema: Mapping[str, Any], path: tuple[str, ...], *, pos: int = 0
) -> tuple[Kind, tuple[str, ...] | None]:
    """The scalar kind of an argument path in a tool's input schema, and its string enum if any.

    Only ``properties`` are followed, and every level must declare its type plainly (``type:
    object`` on the way, one scalar type or a string ``enum`` at the end): the policy compiler
    types the Cedar context from the same declarations, and a field it cannot type would be
    absent in Cedar while present here, so the two evaluations would disagree.
    """
    dotted = ".".join(path)
    node: Any = schema
    for depth, segment in enumerate(path):
        properties = node.get("properties") if isinstance(node, Mapping) else None
        if not isinstance(properties, Mapping) or segment not in properties:
            where = ".".join(path[:depth]) or "the tool's input"
            raise _error(f"unknown argument '{dotted}': {where} has no field '{segment}'", pos)
        node = properties[segment]
        if depth < len(path) - 1 and not (isinstance(node, Mapping) and node.get("type") == "object"):
            parent = ".".join(path[: depth + 1])
            raise _error(f"unknown argument '{dotted}': '{parent}' is not declared 'type: object'", pos)
    if not isinstance(node, Mapping):
        raise _error(f"'{dotted}' has no usable schema", pos)
    declared = node.get("type")
    enum = node.get("enum")
    string_enum = (
        tuple(enum) if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum) else None
    )
    if declared is None and string_enum is not None:
        return "string", string_enum
    if declared in ("string", "integer", "number", "boolean"):
        return declared, string_enum if declared == "string" else None
    if isinstance(declared, list):
        types = ", ".join(map(str, declared))
        raise _error(f"'{dotted}' declares a list of types ({types}); conditions need one type", pos)
    raise _error(
        f"'{dotted}' has type {declared or 'unspecified'}; conditions compare strings, integers, "
        "numbers, booleans or string enums",
        pos,
    )


def parse_condition(text: str, input_schema: Mapping[str, Any]) -> Condition:
    """Parse ``text`` and check it against a tool's input JSON Schema.

    Raises ``ValueError`` naming the column of the first problem: a syntax error, an unknown
    argument path, or a literal that does not fit the field's type.
    """
    if not isinstance(text, str):
        raise ValueError("a condition must be a string")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"condition is longer than {MAX_LENGTH} characters")
    return Condition(text, _Parser(text, input_schema).parse())


# --- evaluation ----------------------------------------------------------------------------------


def _evaluate(node: Node, args: Mapping[str, Any]) -> bool:
    if isinstance(node, Comparison):
        return _compare(node, args)
    if isinstance(node, Not):
        return not _evaluate(node.operand, args)
    if node.op == "and":
        return all(_evaluate(operand, args) for operand in node.operands)
    return any(_evaluate(operand, args) for operand in node.operands)


_MISSING = object()


def _lookup(args: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = args
    for segment in path:
        if not isinstance(value, Mapping) or segment not in value:
            return _MISSING
        value = value[segment]
    return value


def _coerce(value: Any, kind: Kind) -> Scalar | None:
    """The argument as the literal type, or None when it has the wrong type (compares false)."""
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "integer":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        try:
            # repr is the shortest text that round-trips: the number as JSON wrote it.
            number = Decimal(repr(value))
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    if isinstance(value, Decimal) and value.is_finite():
        return value
    return None


def _compare(node: Comparison, args: Mapping[str, Any]) -> bool:
    raw = _lookup(args, node.path)
    if raw is _MISSING or raw is None:
        return False
    value = _coerce(raw, node.kind)
    if value is None:
        return False
    target = node.value
    if node.op == "in":
        assert isinstance(target, tuple)
        return any(value == item for item in target)
    assert not isinstance(target, tuple)
    if node.op == "==":
        return value == target
    if node.op == "!=":
        return value != target
    # Ordering is only ever parsed for integer and number fields, so both sides are numeric here.
    left: Any = value
    right: Any = target
    if node.op == "<":
        return bool(left < right)
    if node.op == "<=":
        return bool(left <= right)
    if node.op == ">":
        return bool(left > right)
    return bool(left >= right)


# --- Cedar ---------------------------------------------------------------------------------------


def cedar_string(value: str) -> str:
    """A Cedar string literal for ``value``.

    Everything outside printable ASCII, and the quote and backslash, is written as an escape, so
    no input can end the literal early or smuggle in policy text.
    """
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate cannot appear in a Cedar string")
        else:
            out.append(f"\\u{{{code:x}}}")
    out.append('"')
    return "".join(out)


def cedar_decimal(value: int | float | Decimal) -> str:
    """The text Cedar's ``decimal()`` accepts for a number (``"50.0"``).

    Raises ``ValueError`` when Cedar cannot hold the number exactly: more than four decimal
    places, out of range, or not finite. The caller should deny the action then.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise ValueError("not a finite number")
    if abs(number) > DECIMAL_MAX:
        raise ValueError(f"{number} is outside the range ±{DECIMAL_MAX}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -DECIMAL_PLACES and number != number.quantize(Decimal(1).scaleb(-DECIMAL_PLACES)):
        raise ValueError(f"{number} has more than {DECIMAL_PLACES} decimal places")
    if exponent < -DECIMAL_PLACES:
        number = number.quantize(Decimal(1).scaleb(-DECIMAL_PLACES))
    text = format(number, "f")
    if text.startswith("-") and number == 0:
        text = text[1:]
    return text if "." in text else text + ".0"


def _cedar_literal(value: Scalar, kind: Kind) -> str:
    if kind == "number":
        assert isinstance(value, Decimal)
        return f'decimal("{cedar_decimal(value)}")'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return cedar_string(value)
    return str(int(value))


def _attribute(segment: str) -> tuple[str, str]:
    """How to test for (``has ...``) and read (``.x`` / ``["x"]``) one attribute."""
    if _CEDAR_IDENT.fullmatch(segment) and segment not in _CEDAR_RESERVED and "__cedar" not in segment:
        return segment, f".{segment}"
    quoted = cedar_string(segment)
    return quoted, f"[{quoted}]"


def _cedar_comparison(node: Comparison, prefix: str) -> str:
    guards: list[str] = []
    access = prefix
    for segment in node.path:
        has_name, reader = _attribute(segment)
        guards.append(f"{access} has {has_name}")
        access += reader
    if node.op == "in":
        assert isinstance(node.value, tuple)
        items = ", ".join(_cedar_literal(item, node.kind) for item in node.value)
        test = f"[{items}].contains({access})"
    else:
        assert not isinstance(node.value, tuple)
        literal = _cedar_literal(node.value, node.kind)
        if node.kind == "number" and node.op in _DECIMAL_METHOD:
            test = f"{access}.{_DECIMAL_METHOD[node.op]}({literal})"
        else:
            test = f"{access} {node.op} {literal}"
    return "(" + " && ".join([*guards, test]) + ")"


def _to_cedar(node: Node, prefix: str) -> str:
    if isinstance(node, Comparison):
        return _cedar_comparison(node, prefix)
    if isinstance(node, Not):
        return f"!{_to_cedar(node.operand, prefix)}"
    joiner = " && " if node.op == "and" else " || "
    return "(" + joiner.join(_to_cedar(operand, prefix) for operand in node.operands) + ")"


__all__ = [
    "BoolOp",
    "Comparison",
    "Condition",
    "Not",
    "cedar_decimal",
    "cedar_string",
    "field_kind",
    "parse_condition",
]
