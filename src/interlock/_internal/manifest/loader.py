"""Loading a workflow manifest: YAML with line numbers, model validation, then semantic checks.

Every problem becomes one :class:`~interlock.exceptions.ManifestError` naming the file, the line
and the dotted field (``tools[3].verb``), so an author can jump straight to it. Only the first
problem is reported; fixing it and re-running is quick, and a precise first error beats a
noisy list.

The YAML is composed into nodes (never constructed into arbitrary Python objects) and turned
into plain data here, which is what lets the loader keep a line for every path, refuse
duplicate keys that PyYAML would silently overwrite, and stop alias bombs before they expand.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, NoReturn

import jsonschema_rs
import yaml
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel, ValidationError

from interlock._internal.manifest.conditions import field_kind, parse_condition
from interlock._internal.manifest.cost_checks import CostChecks
from interlock._internal.manifest.imports import Imported, read_imports
from interlock._internal.manifest.models import TRAITS, VERBS, Manifest, ToolSpec
from interlock._internal.manifest.routing_checks import RoutingChecks
from interlock._internal.manifest.system_checks import SystemChecks
from interlock.exceptions import ManifestError

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 100_000

YamlPath = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$\-]+")
_SCHEMA_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest with what decisions must record about it: its exact text and hash."""

    manifest: Manifest
    text: str
    path: Path | None
    base_dir: Path
    sha256: str
    version_id: str
    lines: dict[YamlPath, int] = field(repr=False, compare=False)

    def line_of(self, *path: str | int) -> int | None:
        """The 1-based line of a YAML path, or of its nearest ancestor that has one."""
        key: YamlPath = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]


def load_manifest(path: str | Path) -> LoadedManifest:
    """Read, parse and check a manifest file. Relative paths inside it resolve from its folder.

    A missing file raises ``ManifestError`` with ``code == "manifest_not_found"``.
    """
    name = str(path)
    file = Path(path)
    try:
        with file.open("rb") as handle:
            # Read one byte past the cap so an oversized file is refused without reading it all.
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError("file not found", file=name, code="manifest_not_found") from exc
    except IsADirectoryError as exc:
        raise ManifestError(
            "is a directory, not a manifest file", file=name, code="manifest_unreadable"
        ) from exc
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", file=name, code="manifest_unreadable") from exc
    if len(raw) > MAX_BYTES:
        raise ManifestError(f"file is larger than {MAX_BYTES} bytes", file=name)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ManifestError("not valid UTF-8", file=name, line=line) from exc
    resolved = file.resolve()
    return _load(text, file=name, path=resolved, base_dir=resolved.parent)


def load_manifest_text(text: str, *, file: str = "<string>", base_dir: Path | None = None) -> LoadedManifest:
    """Parse and check manifest text. ``base_dir`` (default: the working directory) anchors
    relative paths such as ``policies``; ``file`` is the name errors report."""
    return _load(text, file=file, path=None, base_dir=base_dir if base_dir is not None else Path.cwd())


def _load(text: str, *, file: str, path: Path | None, base_dir: Path) -> LoadedManifest:
    if not isinstance(text, str):
        raise ManifestError("manifest text must be a string", file=file)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        line = text[: exc.start].count("\n") + 1
        raise ManifestError("text is not valid Unicode", file=file, line=line) from exc
    if len(encoded) > MAX_BYTES:
        raise ManifestError(f"manifest is larger than {MAX_BYTES} bytes", file=file)
    data, lines = _read_yaml(text, file)
    if not isinstance(data, dict):
        raise ManifestError(
            "a manifest is a YAML mapping (name: ..., tools: ...)", file=file, line=lines.get((), 1)
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, data, lines, file) from None
    imported = (
        read_imports(manifest.imports, base_dir=base_dir, file=file, lines=lines) if manifest.imports else []
    )
    own = len(manifest.systems)
    if imported:
        classes = list(manifest.data_classes)
        for item in imported:
            classes.extend(c for c in item.content.data_classes if c not in classes)
        manifest = manifest.model_copy(
            update={
                "systems": [*manifest.systems, *(s for item in imported for s in item.content.systems)],
                "data_classes": classes,
            }
        )
    origins = [(item, i) for item in imported for i in range(len(item.content.systems))]
    _Checker(manifest, lines, file, base_dir, own_systems=own, imported_systems=origins).run()
    manifest = manifest.model_copy(
        update={
            "tools": [
                tool.model_copy(update={"input_schema": close_schema(tool.input_schema)})
                for tool in manifest.tools
            ]
        }
    )
    digest = _version_digest(encoded, imported)
    return LoadedManifest(
        manifest=manifest,
        text=text,
        path=path,
        base_dir=base_dir,
        sha256=digest,
        version_id=f"{manifest.name}@{manifest.version}#{digest[:12]}",
        lines=lines,
    )


def dotted(path: YamlPath) -> str:
    """``("tools", 3, "verb")`` → ``tools[3].verb``; odd keys are quoted: ``roles["a b"]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


# --- YAML ----------------------------------------------------------------------------------------

# libyaml parses a large manifest about ten times faster than the pure-Python parser, with the
# same events and marks; PyYAML built without it falls back.
_LIBYAML = hasattr(yaml, "CSafeLoader")
_LOADER: Any = yaml.CSafeLoader if _LIBYAML else yaml.SafeLoader


def _version_digest(encoded: bytes, imported: list[Imported]) -> str:
    """The version hash: the manifest's bytes, then each imported file's name and text (so a
    changed shared system is a new version of every workflow importing it). Without imports it is
    the plain SHA-256 of the manifest, as it always was."""
    digest = hashlib.sha256(encoded)
    for item in imported:
        for part in (item.file, item.text):
            data = part.encode("utf-8")
            digest.update(b"\0%d:" % len(data) + data)
    return digest.hexdigest()


def _read_yaml(text: str, file: str) -> tuple[Any, dict[YamlPath, int]]:
    try:
        if not _LIBYAML:
            # PyYAML's pure-Python composer recurses once per nesting level; its parser does not.
            # Measure depth on the event stream first so a deeply nested document is an error,
            # not a crash. (libyaml caps nesting itself, and the builder caps it at MAX_DEPTH.)
            depth = 0
            for event in yaml.parse(text, Loader=_LOADER):
                if isinstance(event, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > MAX_DEPTH:
                        line = event.start_mark.line + 1 if event.start_mark else None
                        raise ManifestError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=line)
                elif isinstance(event, yaml.CollectionEndEvent):
                    depth -= 1
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = ", ".join(part for part in (exc.context, exc.problem) if part) or "cannot be parsed"
        if "maximum nesting depth" in what:  # libyaml's own cap, met while it scans ahead
            raise ManifestError(f"nested more than {MAX_DEPTH} levels deep", file=file, line=line) from None
        raise ManifestError(f"invalid YAML: {what}", file=file, line=line) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ManifestError(
            f"invalid YAML: character {exc.character!r} is not allowed", file=file, line=line
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"invalid YAML: {exc}", file=file) from None
    if root is None:
        raise ManifestError("the manifest is empty", file=file, line=1)
    builder = _Builder(file)
    builder.lines[()] = root.start_mark.line + 1
    return builder.build(root, ()), builder.lines


class _Builder:
    """Turns composed YAML nodes into JSON-like data, recording the line of every path."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[YamlPath, int] = {}
        self.budget = MAX_VALUES
        self.open: set[int] = set()
        self.constructor = yaml.constructor.SafeConstructor()

    def fail(self, message: str, node: yaml.Node, path: YamlPath) -> NoReturn:
        raise ManifestError(
            message, file=self.file, line=node.start_mark.line + 1, field=dotted(path) or None
        )

    def spend(self, node: yaml.Node, path: YamlPath) -> None:
        # Aliases let a small file describe an enormous document; count what is expanded.
        self.budget -= 1
        if self.budget < 0:
            self.fail(f"the document expands to more than {MAX_VALUES} values (alias bomb?)", node, path)

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.spend(node, path)
        if len(path) > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} levels deep", node, path)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.open:
            self.fail("an alias refers to a value that contains it", node, path)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _TAG + "seq":
                    self.fail(f"unsupported YAML tag {node.tag}", node, path)
                items = []
                for index, item in enumerate(node.value):
                    item_path = (*path, index)
                    self.lines[item_path] = item.start_mark.line + 1
                    items.append(self.build(item, item_path))
                return items
            assert isinstance(node, yaml.MappingNode)
            if node.tag != _TAG + "map":
                self.fail(f"unsupported YAML tag {node.tag}", node, path)
            mapping: dict[str, Any] = {}
            for key, key_node, value_node in self.pairs(node, path, frozenset()):
                key_path = (*path, key)
                self.lines[key_path] = key_node.start_mark.line + 1
                mapping[key] = self.build(value_node, key_path)
            return mapping
        finally:
            self.open.discard(id(node))

    def pairs(
        self, node: yaml.MappingNode, path: YamlPath, seen: frozenset[int]
    ) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping's entries: its own keys first, then keys from ``<<`` merges not already set."""
        seen = seen | {id(node)}
        own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            self.spend(key_node, path)
            if key_node.tag == _TAG + "merge":
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            if key in own:
                first = own[key][0].start_mark.line + 1
                self.fail(f"duplicate key '{key}' (first on line {first})", key_node, (*path, key))
            own[key] = (key_node, value_node)
        result = [(key, key_node, value_node) for key, (key_node, value_node) in own.items()]
        present = set(own)
        for merge in merges:
            sources = merge.value if isinstance(merge, yaml.SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.fail("'<<' can only merge mappings", source, path)
                if id(source) in seen:
                    self.fail("'<<' merges a mapping into itself", source, path)
                for key, key_node, value_node in self.pairs(source, path, seen):
                    if key not in present:
                        present.add(key)
                        result.append((key, key_node, value_node))
        return result

    def key(self, node: yaml.Node, path: YamlPath) -> str:
        if isinstance(node, yaml.ScalarNode) and node.tag == _TAG + "str":
            return str(node.value)
        if isinstance(node, yaml.ScalarNode):
            kind = node.tag.rsplit(":", 1)[-1]
            self.fail(
                f"mapping keys must be strings; {node.value!r} is read as a {kind} (put it in quotes)",
                node,
                path,
            )
        self.fail("mapping keys must be strings", node, path)

    def scalar(self, node: yaml.ScalarNode, path: YamlPath) -> Any:
        tag = node.tag
        if tag == _TAG + "str":
            return node.value
        if tag == _TAG + "timestamp":
            # JSON has no dates; keep what the author wrote rather than a datetime object.
            return node.value
        if tag not in (_TAG + "null", _TAG + "bool", _TAG + "int", _TAG + "float"):
            self.fail(f"unsupported YAML tag {tag}", node, path)
        try:
            value = self.constructor.construct_object(node)
        except (ValueError, yaml.YAMLError):
            # int() refuses numbers with thousands of digits; nothing in a manifest needs them.
            self.fail(f"{node.value[:40]!r} is not a usable number", node, path)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"{node.value!r} is not a finite number", node, path)
        return value


# --- model validation errors ---------------------------------------------------------------------

_TYPE_ERRORS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _from_validation_error(
    exc: ValidationError, data: Any, lines: dict[YamlPath, int], file: str
) -> ManifestError:
    errors = exc.errors(include_url=False)
    first_path = _data_path(errors[0], data)
    # A union field (``tool: str | list[str]``) reports one error per member, consecutively;
    # gather those and keep the one that went deepest, i.e. the member the author meant.
    group: list[tuple[YamlPath, Any]] = []
    for error in errors:
        error_path = _data_path(error, data)
        if error_path[: len(first_path)] != first_path:
            break
        group.append((error_path, error))
    deepest = max(len(p) for p, _ in group)
    best = [(p, e) for p, e in group if len(p) == deepest]
    specific = [(p, e) for p, e in best if e["type"] not in _TYPE_ERRORS]
    if specific:
        path, error = specific[0]
        message = _message(error, path)
    else:
        path = best[0][0]
        wanted = list(dict.fromkeys(_TYPE_ERRORS[e["type"]] for _, e in best))
        message = "expected " + " or ".join(wanted) + _found(best[0][1].get("input"))
    return ManifestError(message, file=file, line=_line(lines, path), field=dotted(path) or None)


def _data_path(error: Any, data: Any) -> YamlPath:
    """The error's location as a path through the data, dropping pydantic's union-member labels."""
    loc = error["loc"]
    path: list[str | int] = []
    current = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            path.append(part)
            current = current[part]
        elif part == "[key]":
            continue  # the error is about the key just passed, not a value under it
        elif isinstance(current, dict) and isinstance(part, str) and (part in current or last):
            path.append(part)
            current = current.get(part)
        # anything else is a label such as 'str', 'list[str]', 'python' or '[key]', not data
    if error["type"] == "union_tag_invalid" and isinstance(current, dict):
        discriminator = str(error.get("ctx", {}).get("discriminator", "")).strip("'")
        if discriminator in current:
            path.append(discriminator)
    return tuple(path)


def _line(lines: Mapping[YamlPath, int], path: YamlPath) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _found(value: Any) -> str:
    if isinstance(value, bool | int | float) or value is None:
        shown = json.dumps(value)
        return f", found {shown}" + ("; put it in quotes if it is text" if value is not None else "")
    if isinstance(value, dict):
        return ", found a mapping"
    if isinstance(value, list):
        return ", found a list"
    return ""


def _message(error: Any, path: YamlPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        known = _known_keys(path[:-1])
        close = difflib.get_close_matches(str(path[-1]), known, n=1) if known else []
        hint = (
            f"; did you mean '{close[0]}'?"
            if close
            else (f"; expected one of {', '.join(known)}" if known else "")
        )
        return "unknown key" + hint
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if set(allowed) == set(VERBS):
            return f"{value!r} is not a verb; expected one of {', '.join(VERBS)}"
        if set(allowed) == set(TRAITS):
            return f"{value!r} is not a trait; expected one of {', '.join(TRAITS)}"
        return f"{value!r} is not allowed; expected one of {', '.join(allowed)}"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == _NAME_PATTERN:
            return (
                f"{value!r} is not a valid name: start with a letter, then letters, digits, "
                "'_', '.' or '-' (at most 128)"
            )
        return f"{value!r} does not match the pattern {ctx.get('pattern')}"
    if kind == "union_tag_invalid":
        tag, expected = ctx.get("tag"), ctx.get("expected_tags")
        return f"{tag!r} is not a valid {ctx.get('discriminator')}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"missing {ctx.get('discriminator')}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("greater than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"has more than {ctx.get('max_length')} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "finite_number":
        return "must be a finite number"
    return str(error["msg"])


def _known_keys(path: YamlPath) -> list[str]:
    """Field names the models accept at ``path``, for "did you mean" hints."""
    candidates: list[Any] = [Manifest]
    for part in path:
        following: list[Any] = []
        for annotation in candidates:
            for option in _options(annotation):
                origin = typing.get_origin(option)
                if isinstance(option, type) and issubclass(option, BaseModel):
                    if isinstance(part, str) and part in option.model_fields:
                        following.append(option.model_fields[part].annotation)
                elif origin is list and isinstance(part, int):
                    following.append(typing.get_args(option)[0])
                elif origin is dict and isinstance(part, str):
                    following.append(typing.get_args(option)[1])
        candidates = following
    keys: dict[str, None] = {}
    for annotation in candidates:
        for option in _options(annotation):
            if isinstance(option, type) and issubclass(option, BaseModel):
                keys.update(dict.fromkeys(option.model_fields))
    return list(keys)


def _options(annotation: Any) -> Iterator[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _options(typing.get_args(annotation)[0])
    elif origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(annotation):
            yield from _options(arg)
    else:
        yield annotation


# --- semantic checks -----------------------------------------------------------------------------


class _Checker:
    """Cross-references the models cannot see: names that must exist, schemas that must be valid."""

    def __init__(
        self,
        manifest: Manifest,
        lines: dict[YamlPath, int],
        file: str,
        base_dir: Path,
        *,
        own_systems: int | None = None,
        imported_systems: list[tuple[Imported, int]] | None = None,
    ):
        self.own_systems = len(manifest.systems) if own_systems is None else own_systems
        self.imported_systems = imported_systems or []
        self.m = manifest
        self.lines = lines
        self.file = file
        self.base_dir = base_dir
        self.tools = {tool.name: tool for tool in manifest.tools}

    def fail(self, message: str, *path: str | int) -> NoReturn:
        raise ManifestError(message, file=self.file, line=_line(self.lines, path), field=dotted(path) or None)

    def run(self) -> None:
        self.unique([(env, ("environments", i)) for i, env in enumerate(self.m.environments)], "environment")
        self.unique(
            [(s.name, ("mcp_servers", i, "name")) for i, s in enumerate(self.m.mcp_servers)], "MCP server"
        )
        self.unique([(t.name, ("tools", i, "name")) for i, t in enumerate(self.m.tools)], "tool name")
        for index, tool in enumerate(self.m.tools):
            self.check_tool(index, tool)
        self.check_agents()
        for role, grant in self.m.roles.items():
            for j, name in enumerate(grant.tools):
                self.known_tool(name, "roles", role, "tools", j)
        self.check_rules()
        self.check_stop_rules()
        SystemChecks(self, self.own_systems, self.imported_systems).run()
        CostChecks(self).run()
        RoutingChecks(self).run()
        for index, policy in enumerate(self.m.policies):
            if not (self.base_dir / policy).is_file():
                self.fail(f"policy file '{policy}' not found next to the manifest", "policies", index)
        if self.m.evaluation is not None:
            golden = self.m.evaluation.golden_set
            if PurePosixPath(golden).is_absolute() or PureWindowsPath(golden).is_absolute():
                self.fail(
                    "golden_set must be a path relative to the manifest, so the workflow moves as one folder",
                    "evaluation",
                    "golden_set",
                )
        if self.m.confidence.review > self.m.confidence.auto:
            self.fail("review threshold is above the auto threshold", "confidence", "review")

    def unique(self, items: list[tuple[str, YamlPath]], what: str) -> None:
        first: dict[str, YamlPath] = {}
        for name, path in items:
            if name in first:
                self.fail(
                    f"duplicate {what} '{name}' (first on line {_line(self.lines, first[name])})", *path
                )
            first[name] = path

    def known_tool(self, name: str, *path: str | int) -> ToolSpec:
        tool = self.tools.get(name)
        if tool is None:
            close = difflib.get_close_matches(name, list(self.tools), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            self.fail(f"unknown tool '{name}'{hint}", *path)
        return tool

    def check_tool(self, index: int, tool: ToolSpec) -> None:
        base: YamlPath = ("tools", index)
        self.check_schema(tool.input_schema, (*base, "input_schema"))
        if tool.input_schema.get("type") != "object":
            self.fail("a tool's input_schema must have 'type: object'", *base, "input_schema")
        if tool.output_schema is not None:
            self.check_schema(tool.output_schema, (*base, "output_schema"))
        for j, risk in enumerate(tool.risk_conditions):
            self.condition(risk.when, tool, (*base, "risk_conditions", j, "when"))
        upstream = tool.upstream
        servers = {server.name for server in self.m.mcp_servers}
        if (
            upstream is not None
            and upstream.kind == "mcp"
            and upstream.server is not None
            and upstream.server not in servers
        ):
            self.fail(
                f"unknown MCP server '{upstream.server}'; declare it under mcp_servers",
                *base,
                "upstream",
                "server",
            )

    def check_schema(self, schema: dict[str, Any], path: YamlPath) -> None:
        # The compiled check against the meta-schema costs microseconds; jsonschema's own check
        # (milliseconds per schema, seconds for a large catalogue) only runs to word an error.
        if not jsonschema_rs.meta.is_valid(schema):
            self.schema_error(schema, path, "does not match the JSON Schema 2020-12 meta-schema")
        for where, ref in _refs(schema, ()):
            if not ref.startswith("#"):
                self.fail(
                    "only local references ('#/...') are allowed; remote schemas are never fetched",
                    *path,
                    *where,
                )
        try:
            # Compiles patterns and resolves the (local) references, as the runtime will.
            jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
        except ValueError as exc:
            self.schema_error(schema, path, str(exc).split("\n", 1)[0])

    def schema_error(self, schema: dict[str, Any], path: YamlPath, fallback: str) -> NoReturn:
        """Say what is wrong with a schema the fast check refused, in jsonschema's words."""
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            where = tuple(exc.absolute_path)
            message = exc.message
            if where and where[-1] == "type":
                message = (
                    f"{exc.instance!r} is not a JSON Schema type; expected one of {', '.join(_SCHEMA_TYPES)}"
                )
            self.fail(f"invalid JSON Schema: {message}", *path, *where)
        self.fail(f"invalid JSON Schema: {fallback}", *path)

    def condition(self, text: str, tool: ToolSpec, path: YamlPath) -> None:
        try:
            parse_condition(text, tool.input_schema)
        except ValueError as exc:
            self.fail(f"invalid condition for tool '{tool.name}': {exc}", *path)

    def check_agents(self) -> None:
        self.unique([(a.id, ("agents", i, "id")) for i, a in enumerate(self.m.agents)], "agent id")
        for i, agent in enumerate(self.m.agents):
            if agent.environment not in self.m.environments:
                self.fail(
                    f"environment '{agent.environment}' is not listed in environments "
                    f"({', '.join(self.m.environments)})",
                    "agents",
                    i,
                    "environment",
                )
            for j, role in enumerate(agent.roles):
                if role not in self.m.roles:
                    self.fail(f"role '{role}' is not defined under roles", "agents", i, "roles", j)

    def check_rules(self) -> None:
        ids: list[tuple[str, YamlPath]] = []
        for kind in ("allow", "require_approval", "forbid"):
            for i, rule in enumerate(getattr(self.m.rules, kind)):
                base: YamlPath = ("rules", kind, i)
                if rule.id is not None:
                    ids.append((rule.id, (*base, "id")))
                tools = [
                    self.known_tool(name, *base, "tool", *(() if isinstance(rule.tool, str) else (j,)))
                    for j, name in enumerate(rule.tool_list())
                ]
                for j, role in enumerate(rule.roles or []):
                    if role not in self.m.roles:
                        self.fail(f"role '{role}' is not defined under roles", *base, "roles", j)
                for j, env in enumerate(rule.environments or []):
                    if env not in self.m.environments:
                        self.fail(
                            f"environment '{env}' is not listed in environments", *base, "environments", j
                        )
                if rule.when is not None:
                    if not tools:
                        self.fail(
                            "a rule with 'when' must name its tool(s): the condition is checked "
                            "against their input schema",
                            *base,
                            "when",
                        )
                    for tool in tools:
                        self.condition(rule.when, tool, (*base, "when"))
        self.unique(ids, "rule id")

    def check_stop_rules(self) -> None:
        self.unique(
            [(r.id, ("stop_rules", i, "id")) for i, r in enumerate(self.m.stop_rules)], "stop rule id"
        )
        for i, rule in enumerate(self.m.stop_rules):
            base: YamlPath = ("stop_rules", i)
            tools = [
                self.known_tool(name, *base, "tool", *(() if isinstance(rule.tool, str) else (j,)))
                for j, name in enumerate(rule.tool_list())
            ]
            for key in ("sources", "sequence"):
                for j, name in enumerate(getattr(rule, key)):
                    self.known_tool(name, *base, key, j)
            for j, required in enumerate(rule.required):
                for tool in tools:
                    if not _has_path(tool.input_schema, required.split(".")):
                        self.fail(f"tool '{tool.name}' has no argument '{required}'", *base, "required", j)
            if rule.field is not None and tools:
                for tool in tools:
                    try:
                        field_kind(tool.input_schema, tuple(rule.field.split(".")))
                    except ValueError as exc:
                        self.fail(f"for tool '{tool.name}': {exc}", *base, "field")


def _has_path(schema: Any, parts: list[str]) -> bool:
    for part in parts:
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(properties, dict) or part not in properties:
            return False
        schema = properties[part]
    return True


def _refs(schema: Any, path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield (*path, key), value
            else:
                yield from _refs(value, (*path, key))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _refs(value, (*path, index))


# --- schema normalisation ------------------------------------------------------------------------

_COMPOSED = ("allOf", "anyOf", "oneOf", "$ref", "$dynamicRef", "if", "dependentSchemas")


def close_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which every object schema rejects unknown fields.

    An object that does not say ``additionalProperties`` (or ``unevaluatedProperties``) gets
    ``additionalProperties: false``. One that composes other schemas (``allOf``, ``$ref``, ...)
    gets ``unevaluatedProperties: false`` instead, because ``additionalProperties`` cannot see
    properties declared in the composed parts and would reject them.
    """
    result = copy.deepcopy(schema)
    _close(result, implicit_object=True)
    return result


def _close(schema: Any, *, implicit_object: bool) -> None:
    if not isinstance(schema, dict):
        return
    declared = schema.get("type")
    is_object = declared == "object" or (isinstance(declared, list) and "object" in declared)
    # Without a type, 'properties' still describes an object, except in a combinator branch,
    # where it is usually one part of a larger object and must stay open.
    if declared is None and implicit_object and "properties" in schema:
        is_object = True
    if is_object and "additionalProperties" not in schema and "unevaluatedProperties" not in schema:
        if any(key in schema for key in _COMPOSED):
            schema["unevaluatedProperties"] = False
        else:
            schema["additionalProperties"] = False
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        children = schema.get(key)
        if isinstance(children, dict):
            for child in children.values():
                _close(child, implicit_object=True)
    for key in ("items", "additionalProperties", "unevaluatedProperties", "contains"):
        _close(schema.get(key), implicit_object=True)
    prefix = schema.get("prefixItems")
    if isinstance(prefix, list):
        for child in prefix:
            _close(child, implicit_object=True)
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                _close(branch, implicit_object=False)


__all__ = ["LoadedManifest", "close_schema", "dotted", "load_manifest", "load_manifest_text"]
