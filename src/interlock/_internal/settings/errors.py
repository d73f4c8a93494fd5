"""Settings errors a person can act on: the file (and line) or environment variable, the key, what
is wrong, and the nearest known key when a name is misspelt.

    interlock.toml:3: server.prot: unknown setting; did you mean server.port?
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from interlock.exceptions import ConfigError

TOML_FILE = Path("interlock.toml")
ENV_PREFIX = "INTERLOCK_"


def _fields(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, to suggest from."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def _line_of(text: str, loc: tuple[str, ...]) -> int | None:
    """The line of ``loc`` in an ``interlock.toml``: its ``[table]`` header, or its ``key =`` line
    inside the table that holds it."""
    table, key = ".".join(loc[:-1]), loc[-1]
    current = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        header = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            current = header.group(1)
            if current == ".".join(loc):
                return number
        elif current == table and re.match(rf"{re.escape(key)}\s*=", line):
            return number
    return None


def _where(loc: tuple[str | int, ...], toml: dict[str, Any], text: str, file: Path) -> str:
    node: Any = toml
    for part in loc:
        found = node.get(part) if isinstance(node, dict) else None
        if found is None and isinstance(node, list) and isinstance(part, int) and part < len(node):
            found = node[part]
        if found is not None:
            node = found
        else:
            env = ENV_PREFIX + "__".join(str(p).upper() for p in loc if isinstance(p, str))
            return f"environment {env}"
    line = _line_of(text, tuple(p for p in loc if isinstance(p, str)))
    return f"{file}:{line}" if line is not None else str(file)


def explain(exc: ValidationError, *, model: type[BaseModel], file: Path = TOML_FILE) -> str:
    """One line per problem: ``where: key: what`` (with a did-you-mean for unknown keys)."""
    text = file.read_text(encoding="utf-8") if file.is_file() else ""
    try:
        toml = tomllib.loads(text) if text else {}
    except tomllib.TOMLDecodeError:
        toml = {}
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "(settings)"
        if error["type"] == "extra_forbidden":
            known = _fields(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            prefix = ".".join(str(p) for p in loc[:-1])
            hint = f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?" if close else ""
            if not hint and known:
                hint = f"; known here: {', '.join(sorted(known))}"
            what = f"unknown setting{hint}"
        else:
            what = error["msg"]
            if "input" in error and not isinstance(error["input"], dict | list):
                what += f" (got {error['input']!r})"
        problems.append(f"{_where(loc, toml, text, file)}: {key}: {what}")
    return "\n".join(problems)


def load(model: type[BaseModel], *, file: Path = TOML_FILE) -> Any:
    """Build the settings, or raise :class:`ConfigError` with :func:`explain`'s message."""
    try:
        return model()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}", code="invalid_settings") from exc
    except ValidationError as exc:
        raise ConfigError(explain(exc, model=model, file=file), code="invalid_settings") from exc


__all__ = ["explain", "load"]
