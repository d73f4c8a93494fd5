"""Checks on systems, bindings, data classes and flow rules that the models cannot see alone.

Run by the loader's checker after the tools are checked; every error names its file and line,
the imported systems file's own when the problem is in one.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, NoReturn

from interlock._internal.manifest.models import Binding, CredentialRef, SystemSpec, ToolSpec
from interlock.exceptions import ManifestError

if TYPE_CHECKING:
    from interlock._internal.manifest.imports import Imported
    from interlock._internal.manifest.loader import YamlPath, _Checker


def _credential_key(ref: CredentialRef | None) -> str | None:
    if ref is None:
        return None
    return f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}"


def _origin(url: str | None) -> str | None:
    if url is None:
        return None
    scheme, _, rest = url.partition("://")
    return f"{scheme.lower()}://{rest.split('/', 1)[0].lower()}"


class SystemChecks:
    def __init__(self, checker: _Checker, own: int, imported: list[tuple[Imported, int]]) -> None:
        self.c = checker
        self.m = checker.m
        self.own = own  # the first ``own`` systems are the manifest's; the rest come from imports
        self.imported = imported  # per imported system: its file and index there
        self.classes = set(self.m.known_data_classes())
        self.systems = {s.name: s for s in self.m.systems}

    def fail_system(self, index: int, message: str, *path: str | int) -> NoReturn:
        if index < self.own:
            self.c.fail(message, "systems", index, *path)
        from interlock._internal.manifest.loader import _line, dotted

        imported, local = self.imported[index - self.own]
        where: YamlPath = ("systems", local, *path)
        raise ManifestError(
            message, file=imported.file, line=_line(imported.lines, where), field=dotted(where)
        )

    def known_class(self, name: str, fail: object, *path: str | int) -> None:
        if name not in self.classes:
            close = difflib.get_close_matches(name, sorted(self.classes), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            message = f"unknown data class '{name}'{hint} (declare it under data_classes)"
            fail(message, *path)  # type: ignore[operator]

    def run(self) -> None:
        seen: dict[str, int] = {}
        for index, system in enumerate(self.m.systems):
            if system.name in seen:
                first = seen[system.name]
                where = (
                    "this manifest" if first < self.own else f"'{self.imported[first - self.own][0].file}'"
                )
                self.fail_system(index, f"duplicate system '{system.name}' (first in {where})", "name")
            seen[system.name] = index
            self.check_system(index, system)
        for index, tool in enumerate(self.m.tools):
            self.check_tool(index, tool)
        self.c.unique(
            [(r.id, ("flow_rules", i, "id")) for i, r in enumerate(self.m.flow_rules)], "flow rule id"
        )
        for i, rule in enumerate(self.m.flow_rules):
            for j, name in enumerate(rule.classes):
                self.known_class(name, self.c.fail, "flow_rules", i, "classes", j)

    def check_system(self, index: int, system: SystemSpec) -> None:
        for j, name in enumerate(system.data_classes):
            self.known_class(name, lambda msg, *p: self.fail_system(index, msg, *p), "data_classes", j)
        credentials: dict[str, str] = {}
        origins: dict[str, str] = {}
        for env, binding in system.bindings.items():
            if index < self.own and env not in self.m.environments:
                self.fail_system(
                    index,
                    f"environment '{env}' is not listed in environments ({', '.join(self.m.environments)})",
                    "bindings",
                    env,
                )
            # Two environments sharing a credential or an endpoint is exactly how staging reaches
            # production; each environment gets its own.
            key = _credential_key(binding.credential)
            if key is not None and key in credentials:
                self.fail_system(
                    index,
                    f"environments '{credentials[key]}' and '{env}' share the credential {key}; "
                    "each environment needs its own",
                    "bindings",
                    env,
                    "credential",
                )
            origin = _origin(binding.url)
            if origin is not None and origin in origins:
                self.fail_system(
                    index,
                    f"environments '{origins[origin]}' and '{env}' share the endpoint {origin}; "
                    "each environment needs its own",
                    "bindings",
                    env,
                    "url",
                )
            if key is not None:
                credentials[key] = env
            if origin is not None:
                origins[origin] = env

    def check_tool(self, index: int, tool: ToolSpec) -> None:
        base: YamlPath = ("tools", index)
        for j, name in enumerate(tool.returns):
            self.known_class(name, self.c.fail, *base, "returns", j)
        if tool.data_subject is not None and not tool.returns:
            self.c.fail(
                "data_subject names whose data a result is; declare the classes under 'returns'",
                *base,
                "data_subject",
            )
        if tool.destination is not None:
            for j, name in enumerate(tool.destination.cleared):
                self.known_class(name, self.c.fail, *base, "destination", "cleared", j)
            recipient = tool.destination.recipient
            if recipient is not None:
                from interlock._internal.manifest.loader import _has_path

                if not _has_path(tool.input_schema, recipient.split(".")):
                    self.c.fail(
                        f"tool '{tool.name}' has no argument '{recipient}'", *base, "destination", "recipient"
                    )
        upstream = tool.upstream
        system = None
        if tool.system is not None:
            system = self.systems.get(tool.system)
            if system is None:
                close = difflib.get_close_matches(tool.system, list(self.systems), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.c.fail(
                    f"unknown system '{tool.system}'{hint}; declare it under systems or import it",
                    *base,
                    "system",
                )
        bindings = system.bindings if system is not None else {}
        if upstream is not None and upstream.kind == "http" and upstream.url.startswith("/") and not bindings:
            self.c.fail(
                "a URL that is a path is joined to the tool's system binding; name a system with bindings "
                "or write the full URL",
                *base,
                "upstream",
                "url",
            )
        if upstream is not None and upstream.kind == "mcp" and upstream.server is None and not bindings:
            self.c.fail(
                "missing server (or a system whose bindings name mcp_server)", *base, "upstream", "server"
            )
        if not bindings or system is None:
            return
        if tool.credential is not None and any(b.credential is not None for b in bindings.values()):
            self.c.fail(
                f"system '{system.name}' binds the credential per environment; remove the tool's own "
                "so no environment can fall back to it",
                *base,
                "credential",
            )
        servers = {server.name for server in self.m.mcp_servers}
        for env, binding in bindings.items():
            if env not in self.m.environments:
                continue
            self.check_binding(base, tool, system, env, binding, servers)

    def check_binding(
        self,
        base: YamlPath,
        tool: ToolSpec,
        system: SystemSpec,
        env: str,
        binding: Binding,
        servers: set[str],
    ) -> None:
        upstream = tool.upstream
        if upstream is None:
            return
        if upstream.kind == "http":
            if binding.url is None:
                self.c.fail(
                    f"system '{system.name}' has no url for environment '{env}', which this HTTP tool needs",
                    *base,
                    "upstream",
                    "url",
                )
            if not upstream.url.startswith("/"):
                self.c.fail(
                    f"system '{system.name}' binds its endpoint per environment: write upstream.url as a "
                    "path ('/tickets/{ticket_id}') that is joined to it",
                    *base,
                    "upstream",
                    "url",
                )
        elif upstream.kind == "mcp":
            if upstream.server is not None:
                self.c.fail(
                    f"system '{system.name}' names the MCP server per environment; remove 'server'",
                    *base,
                    "upstream",
                    "server",
                )
            if binding.mcp_server is None:
                self.c.fail(
                    f"system '{system.name}' has no mcp_server for environment '{env}', "
                    "which this MCP tool needs",
                    *base,
                    "upstream",
                )
            if binding.mcp_server not in servers:
                self.c.fail(
                    f"system '{system.name}' binds unknown MCP server '{binding.mcp_server}' for "
                    f"environment '{env}'; declare it under mcp_servers",
                    *base,
                    "upstream",
                )


__all__ = ["SystemChecks"]
