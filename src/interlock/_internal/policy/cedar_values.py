"""Arguments → Cedar values, typed by the tool's input schema.

JSON numbers become Cedar ``decimal`` values (4 decimal places); a number Cedar cannot hold
exactly is refused rather than rounded, because rounding ``50.00001`` to ``50.0`` would slip a
refund under a ``amount <= 50`` rule.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

DECIMAL_MAX = Decimal("922337203685477.5807")
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


class CedarValueError(ValueError):
    """An argument value that cannot be represented in Cedar without changing its meaning."""


def cedar_type(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Cedar schema type for a JSON Schema, or None when it has no single Cedar type."""
    kind = schema.get("type")
    if kind is None and "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        kind = "string"
    if kind is None and "const" in schema and isinstance(schema["const"], str):
        kind = "string"
    if kind == "string":
        return {"type": "String"}
    if kind == "integer":
        return {"type": "Long"}
    if kind == "number":
        return {"type": "Extension", "name": "decimal"}
    if kind == "boolean":
        return {"type": "Boolean"}
    if kind == "array":
        items = schema.get("items")
        element = cedar_type(items) if isinstance(items, dict) else None
        return None if element is None else {"type": "Set", "element": element}
    if kind == "object":
        return {"type": "Record", "attributes": record_attributes(schema)}
    return None


def record_attributes(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties") or {}
    attrs: dict[str, Any] = {}
    for name, sub in props.items():
        if not isinstance(sub, dict):
            continue
        typ = cedar_type(sub)
        if typ is not None:
            attrs[name] = {**typ, "required": False}
    return attrs


def to_cedar(value: Any, schema: dict[str, Any]) -> Any:
    """Convert one validated argument value; raises CedarValueError when it cannot be exact."""
    typ = cedar_type(schema)
    if typ is None:
        raise CedarValueError("has no Cedar type")
    return _convert(value, typ, schema)


def args_to_cedar(args: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The ``context.args`` record: every typed argument present, converted; untyped ones left out."""
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name, value in args.items():
        sub = props.get(name)
        if not isinstance(sub, dict):
            continue
        typ = cedar_type(sub)
        if typ is None:
            continue
        try:
            out[name] = _convert(value, typ, sub)
        except CedarValueError as exc:
            raise CedarValueError(f"{name}: {exc}") from None
    return out


def _convert(value: Any, typ: dict[str, Any], schema: dict[str, Any]) -> Any:
    kind = typ["type"]
    if kind == "String":
        if not isinstance(value, str):
            raise CedarValueError("expected a string")
        return value
    if kind == "Boolean":
        if not isinstance(value, bool):
            raise CedarValueError("expected a boolean")
        return value
    if kind == "Long":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise CedarValueError("expected an integer")
        number = int(value)
        if not LONG_MIN <= number <= LONG_MAX:
            raise CedarValueError("integer out of range for policy evaluation")
        return number
    if kind == "Extension":
        return {"__extn": {"fn": "decimal", "arg": decimal_text(value)}}
    if kind == "Set":
        if not isinstance(value, list):
            raise CedarValueError("expected an array")
        items = schema.get("items") or {}
        return [_convert(v, typ["element"], items) for v in value]
    if kind == "Record":
        if not isinstance(value, dict):
            raise CedarValueError("expected an object")
        return args_to_cedar(value, schema)
    raise CedarValueError(f"unsupported Cedar type {kind}")


def decimal_text(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CedarValueError("expected a number")
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise CedarValueError("not a finite number") from exc
    if not exact.is_finite():
        raise CedarValueError("not a finite number")
    if abs(exact) > DECIMAL_MAX:
        raise CedarValueError("number too large for policy evaluation")
    exponent = exact.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        raise CedarValueError("more than 4 decimal places; policies compare up to 4")
    return f"{exact:.4f}"
