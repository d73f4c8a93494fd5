"""Checks on read caches and value limits that the models cannot see alone.

Run by the loader's checker after the tools are checked; every error names its file, line and
field: a cache on a tool that is not an idempotent read, a key or an invalidation mapping naming
an argument the tool does not have, a value limit summing an argument that is not a number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interlock._internal.manifest.conditions import field_kind
from interlock._internal.manifest.models import ToolSpec

if TYPE_CHECKING:
    from interlock._internal.manifest.loader import _Checker


class CostChecks:
    def __init__(self, checker: _Checker) -> None:
        self.c = checker
        self.m = checker.m

    def run(self) -> None:
        for index, tool in enumerate(self.m.tools):
            if tool.cache is not None:
                self.check_cache(index, tool)
        self.check_value_limits()

    def kind(self, tool: ToolSpec, path: str, *where: str | int) -> str:
        try:
            return field_kind(tool.input_schema, tuple(path.split(".")))[0]
        except ValueError as exc:
            self.c.fail(f"for tool '{tool.name}': {exc}", *where)

    def check_cache(self, index: int, tool: ToolSpec) -> None:
        cache = tool.cache
        assert cache is not None
        base = ("tools", index, "cache")
        if not tool.idempotent:
            self.c.fail(
                f"tool '{tool.name}' is not idempotent: only an idempotent read may be cached "
                "(a cached answer must be one the upstream would give again)",
                *base,
            )
        if tool.verb != "read":
            self.c.fail(f"tool '{tool.name}' has verb '{tool.verb}': only 'read' tools may be cached", *base)
        for j, path in enumerate(cache.key or []):
            self.kind(tool, path, *base, "key", j)
        for j, inv in enumerate(cache.invalidated_by):
            where = (*base, "invalidated_by", j)
            writer = self.c.known_tool(inv.tool, *where, "tool")
            if writer.verb == "read":
                self.c.fail(f"'{inv.tool}' is a read; only a write can make an answer stale", *where, "tool")
            if inv.arguments is None:
                continue
            key = cache.key
            if key is None:
                self.c.fail(
                    "an argument mapping needs the cache's 'key' (the arguments it maps)", *where, "arguments"
                )
            missing = [k for k in key if k not in inv.arguments]
            if missing:
                self.c.fail(
                    f"the mapping must give every key argument of '{tool.name}'; "
                    f"missing {', '.join(missing)}",
                    *where,
                    "arguments",
                )
            for target, source in inv.arguments.items():
                if target not in key:
                    self.c.fail(f"'{target}' is not in the cache key ({', '.join(key)})", *where, "arguments")
                self.kind(writer, source, *where, "arguments", target)

    def check_value_limits(self) -> None:
        limits = self.m.budgets.value_limits
        self.c.unique(
            [(v.id, ("budgets", "value_limits", i, "id")) for i, v in enumerate(limits)], "value limit id"
        )
        for i, limit in enumerate(limits):
            base = ("budgets", "value_limits", i)
            single = isinstance(limit.tool, str)
            for j, name in enumerate(limit.tool_list()):
                tool = self.c.known_tool(name, *base, "tool", *(() if single else (j,)))
                kind = self.kind(tool, limit.argument, *base, "argument")
                if kind not in ("integer", "number"):
                    self.c.fail(
                        f"'{limit.argument}' of tool '{name}' is a {kind}; a value limit sums a number",
                        *base,
                        "argument",
                    )
                for k, path in enumerate(limit.per):
                    self.kind(tool, path, *base, "per", k)
                if limit.when is not None:
                    self.c.condition(limit.when, tool, (*base, "when"))
