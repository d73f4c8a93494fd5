"""A tool's arguments as a form built from its input schema, and the form's answers checked back
against that schema with an error for each field.

A person correcting a held action edits named, typed fields instead of a JSON text: a string is a
text box (a long one a text area), a number or integer a number box, a boolean or an ``enum`` a
choice, an array of plain values one value per line, an object with ``properties`` a group of its
own fields (to three levels), and anything else JSON in a text area. Field names are the argument
paths (``fields.priority``). What comes back is parsed by the same rules, empty optional fields are
left out, and the result is validated with the tool's own validator (the one the pipeline uses), so
every error names the field it belongs to. A field left empty is not sent, so a required one is
reported as missing rather than sent as an empty string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from interlock._internal.gateway.runtime import ToolRuntime, field_of

FieldKind = Literal["text", "textarea", "integer", "number", "boolean", "choice", "lines", "json", "group"]

# A string longer than this (or without a bound) gets a text area instead of a one-line box.
_LONG_TEXT = 200
_MAX_DEPTH = 3
_INTEGER = re.compile(r"^[+-]?\d+$")
_PLAIN = ("string", "integer", "number", "boolean")


@dataclass(frozen=True, slots=True)
class FormField:
    """One input of the form (or, ``kind == "group"``, the heading of a nested object)."""

    name: str  # the argument's path, dotted: "fields.priority"
    label: str
    kind: FieldKind
    required: bool
    value: str  # as the input shows it
    choices: tuple[str, ...] = ()
    hint: str = ""
    depth: int = 0
    item_type: str = ""  # for "lines": the type of each line's value


def _type_of(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if k != "null"]
        return named[0] if len(named) == 1 else None
    return kind if isinstance(kind, str) else None


def _shown(value: Any) -> str:
    """How a value reads in a choice or a box: strings as they are, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _hint(schema: Mapping[str, Any], kind: str) -> str:
    parts = []
    if schema.get("description"):
        parts.append(str(schema["description"]))
    for key, words in (
        ("minimum", "at least"),
        ("exclusiveMinimum", "more than"),
        ("maximum", "at most"),
        ("exclusiveMaximum", "less than"),
    ):
        if isinstance(schema.get(key), int | float) and not isinstance(schema.get(key), bool):
            parts.append(f"{words} {schema[key]}")
    if isinstance(schema.get("maxLength"), int):
        parts.append(f"up to {schema['maxLength']} characters")
    if isinstance(schema.get("pattern"), str):
        parts.append(f"pattern {schema['pattern']}")
    if isinstance(schema.get("format"), str):
        parts.append(f"format {schema['format']}")
    if kind == "lines":
        parts.append("one value per line")
    if kind == "json":
        parts.append("as JSON")
    return "; ".join(parts)


def _kind(schema: Mapping[str, Any], depth: int) -> tuple[FieldKind, str]:
    if "enum" in schema or "const" in schema:
        return "choice", ""
    kind = _type_of(schema)
    if kind == "object" and isinstance(schema.get("properties"), dict) and depth < _MAX_DEPTH:
        return "group", ""
    if kind == "boolean":
        return "boolean", ""
    if kind == "integer":
        return "integer", ""
    if kind == "number":
        return "number", ""
    if kind == "string":
        # A bounded, patterned or formatted string is one line (an id, an address); prose is long.
        bound = schema.get("maxLength")
        if isinstance(bound, int) and bound > _LONG_TEXT:
            return "textarea", ""
        shaped = isinstance(bound, int) or "pattern" in schema or "format" in schema
        return ("text" if shaped else "textarea"), ""
    if kind == "array":
        items = schema.get("items")
        item_type = _type_of(items) if isinstance(items, dict) else None
        if item_type in _PLAIN and "enum" not in (items or {}) and item_type != "boolean":
            return "lines", str(item_type)
    return "json", ""


def form_fields(
    schema: Mapping[str, Any], values: Any, *, prefix: str = "", depth: int = 0
) -> list[FormField]:
    """The form for ``schema`` (an object schema), filled with ``values``."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return []
    required = set(schema.get("required") or [])
    current = values if isinstance(values, dict) else {}
    fields: list[FormField] = []
    for name, sub in properties.items():
        if not isinstance(sub, dict):
            continue
        path = f"{prefix}{name}"
        kind, item_type = _kind(sub, depth)
        value = current.get(name)
        label = name.replace("_", " ")
        if kind == "group":
            fields.append(
                FormField(path, label, "group", name in required, "", hint=_hint(sub, kind), depth=depth)
            )
            fields += form_fields(sub, value, prefix=f"{path}.", depth=depth + 1)
            continue
        choices: tuple[str, ...] = ()
        if kind == "choice":
            options = sub["enum"] if "enum" in sub else [sub["const"]]
            choices = tuple(_shown(o) for o in options)
        if value is None:
            shown = ""
        elif kind == "lines" and isinstance(value, list):
            shown = "\n".join(_shown(v) for v in value)
        elif kind == "json":
            shown = json.dumps(value, ensure_ascii=False, indent=2)
        elif kind == "boolean":
            shown = "true" if value is True else "false" if value is False else _shown(value)
        else:
            shown = _shown(value)
        fields.append(
            FormField(
                path,
                label,
                kind,
                name in required,
                shown,
                choices=choices,
                hint=_hint(sub, kind),
                depth=depth,
                item_type=item_type,
            )
        )
    return fields


def _number(text: str, kind: str) -> int | float:
    if _INTEGER.match(text):
        return int(text)
    if kind == "integer":
        raise ValueError("a whole number")
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("a finite number")
    return number


def _parse(field: FormField, raw: str, schema: Mapping[str, Any]) -> Any:
    text = raw.strip() if field.kind not in ("text", "textarea") else raw
    if field.kind == "choice":
        options = schema["enum"] if "enum" in schema else [schema["const"]]
        for option in options:
            if _shown(option) == raw:
                return option
        raise ValueError(f"one of {', '.join(_shown(o) for o in options)}")
    if field.kind in ("integer", "number"):
        try:
            return _number(text, field.kind)
        except ValueError:
            raise ValueError("a whole number" if field.kind == "integer" else "a number") from None
    if field.kind == "boolean":
        if text not in ("true", "false"):
            raise ValueError("true or false")
        return text == "true"
    if field.kind == "lines":
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        if field.item_type in ("integer", "number"):
            try:
                return [_number(line, field.item_type) for line in lines]
            except ValueError:
                raise ValueError(f"one {field.item_type} per line") from None
        return lines
    if field.kind == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"valid JSON ({exc.args[0] if exc.args else 'unreadable'})") from None
    return raw


def _schema_at(schema: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    node: Any = schema
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def parse_form(tool: ToolRuntime, answers: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The arguments ``answers`` (field path → text) make, and the errors by field path; no
    errors means the arguments pass the tool's input schema."""
    schema = tool.spec.input_schema
    fields = form_fields(schema, {})
    arguments: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        if field.kind == "group":
            continue
        raw = answers.get(field.name, "")
        if not raw.strip():  # left empty: not sent (a required one is then named as missing)
            continue
        try:
            value = _parse(field, raw, _schema_at(schema, field.name))
        except ValueError as exc:
            errors[field.name] = f"Expected {exc.args[0]}."
            continue
        target = arguments
        *parents, last = field.name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    # Required groups exist even when all their fields were left empty, so the schema names them.
    for field in fields:
        if field.kind == "group" and field.required:
            target = arguments
            for part in field.name.split("."):
                target = target.setdefault(part, {})
    if not errors:
        for error in tool.validator.iter_errors(arguments):
            where = _field_path(error)
            errors.setdefault(where, _message(error))
    return arguments, errors


def _field_path(error: Any) -> str:
    path = field_of(error).split(".")
    # A value inside a list is the list's field in the form (one value per line).
    while len(path) > 1 and path[-1].isdigit():
        path.pop()
    return ".".join(path)


def _message(error: Any) -> str:
    if type(error.kind).__name__ == "Required":
        return "Required."
    text = str(error.message)
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


__all__ = ["FormField", "form_fields", "parse_form"]
