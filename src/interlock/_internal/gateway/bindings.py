"""Per-environment bindings: a tool reaches its system the way the run's environment says.

A tool that names a system with bindings has no endpoint or credential of its own: for each
environment the runtime builds a copy of the tool whose upstream and credential come from that
environment's binding. A run in an environment the system does not bind cannot call the tool at
all; there is no fallback to another environment's binding or to the tool's own settings.
"""

from __future__ import annotations

from typing import Any

from interlock._internal.manifest.models import (
    Binding,
    CredentialRef,
    HttpUpstream,
    Manifest,
    McpUpstream,
    SystemSpec,
    ToolSpec,
)


def binding_record(system: SystemSpec, environment: str, binding: Binding, tool: ToolSpec) -> dict[str, Any]:
    """What a decision records about the binding it used: never a secret, only references."""
    kind = tool.upstream.kind if tool.upstream is not None else None
    endpoint: str | None = None
    if kind == "http" and binding.url is not None:
        scheme, _, rest = binding.url.partition("://")
        endpoint = f"{scheme}://{rest.split('/', 1)[0]}"
    elif kind == "mcp":
        endpoint = f"mcp:{binding.mcp_server}"
    return {
        "system": system.name,
        "environment": environment,
        "endpoint": endpoint,
        "credential": credential_ref(binding.credential),
    }


def credential_ref(ref: CredentialRef | None) -> str | None:
    """``env:NAME`` or ``file:path``: where a secret lives, never the secret."""
    if ref is None:
        return None
    return f"env:{ref.env}" if ref.env is not None else f"file:{ref.file}"


def bind_tool(tool: ToolSpec, binding: Binding) -> ToolSpec:
    """The tool as one environment's binding makes it: its upstream and credential resolved."""
    upstream = tool.upstream
    update: dict[str, Any] = {}
    if isinstance(upstream, HttpUpstream) and binding.url is not None:
        update["upstream"] = upstream.model_copy(update={"url": binding.url.rstrip("/") + upstream.url})
    elif isinstance(upstream, McpUpstream) and binding.mcp_server is not None:
        update["upstream"] = upstream.model_copy(update={"server": binding.mcp_server})
    if binding.credential is not None:
        update["credential"] = binding.credential
    return tool.model_copy(update=update)


def bound_system(manifest: Manifest, tool: ToolSpec) -> SystemSpec | None:
    """The tool's system when it binds endpoints or credentials per environment, else None."""
    if tool.system is None:
        return None
    system = manifest.system(tool.system)
    if system is None or not system.bindings:
        return None
    return system


__all__ = ["bind_tool", "binding_record", "bound_system", "credential_ref"]
