"""A workflow version ready to serve: compiled policy, compiled validators, transports."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema_rs

from interlock._internal.gateway.bindings import bind_tool, binding_record, bound_system
from interlock._internal.gateway.egress import EgressPolicy
from interlock._internal.gateway.transports.base import Transport
from interlock._internal.gateway.transports.python import PythonTransport
from interlock._internal.manifest.conditions import Condition, parse_condition
from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.manifest.models import Manifest, ToolSpec
from interlock._internal.policy.compiler import CompiledPolicy, compile_manifest
from interlock._internal.policy.visibility import warm_visibility
from interlock.exceptions import ArgumentsInvalid, NotFound

MAX_ARGUMENT_BYTES = 256 * 1024


@dataclass(frozen=True)
class ToolRuntime:
    spec: ToolSpec
    validator: Any = field(repr=False)
    output_validator: Any = field(repr=False)
    risk_conditions: tuple[tuple[Condition, tuple[str, ...]], ...] = ()

    def validate(self, arguments: Any) -> None:
        """Raise ArgumentsInvalid naming the first offending field."""
        if not isinstance(arguments, dict):
            raise ArgumentsInvalid("arguments must be a JSON object", field="arguments")
        for error in self.validator.iter_errors(arguments):
            raise ArgumentsInvalid(error.message, field=field_of(error))

    def output_errors(self, result: Any) -> str | None:
        if self.output_validator is None:
            return None
        for error in self.output_validator.iter_errors(result):
            return f"{field_of(error) or 'result'}: {error.message}"
        return None

    def risk(self, arguments: dict[str, Any]) -> list[str]:
        traits: set[str] = set(self.spec.traits)
        for condition, extra in self.risk_conditions:
            if condition.evaluate(arguments):
                traits.update(extra)
        return sorted(traits)


def field_of(error: Any) -> str:
    """The dotted path of the field a schema error is about (a missing or unexpected property
    included), or ``arguments``."""
    path = [str(p) for p in error.instance_path]
    detail = error.kind.as_dict() if hasattr(error.kind, "as_dict") else {}
    prop = detail.get("property")
    unexpected = detail.get("unexpected")
    if isinstance(prop, str):
        path.append(prop)
    elif isinstance(unexpected, list) and unexpected:
        path.append(str(unexpected[0]))
    return ".".join(path) or "arguments"


@dataclass
class WorkflowRuntime:
    loaded: LoadedManifest
    compiled: CompiledPolicy
    tools: dict[str, ToolRuntime]
    transports: dict[str, Transport]
    owned: tuple[str, ...] = ()  # transports this runtime created and closes; shared ones stay open
    # (tool, environment) → the tool as that environment's system binding resolves it, with
    # what the decision records; None when the system does not bind that environment.
    bound_tools: dict[tuple[str, str], tuple[ToolRuntime, dict[str, Any]] | None] = field(
        default_factory=dict
    )
    # Tools whose decision needs the data classes the run carries (a destination to check, or
    # policies that speak of context.data_classes).
    flow_tools: frozenset[str] = frozenset()
    # Answers that depend only on this version (which tools an agent sees, say): computed once.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def manifest(self) -> Manifest:
        return self.loaded.manifest

    @property
    def name(self) -> str:
        return self.loaded.manifest.name

    @property
    def version_id(self) -> str:
        return self.loaded.version_id

    def tool(self, name: str) -> ToolRuntime:
        runtime = self.tools.get(name)
        if runtime is None:
            raise NotFound(f"unknown tool {name!r} in workflow {self.name}", code="unknown_tool")
        return runtime

    def bound(self, tool: ToolRuntime, environment: str) -> tuple[ToolRuntime, dict[str, Any] | None] | None:
        """The tool for a run in ``environment``: itself when its system binds nothing, its
        environment's binding when it does, or None (no binding for that environment: refuse)."""
        key = (tool.spec.name, environment)
        if key not in self.bound_tools:
            return tool, None
        return self.bound_tools[key]

    def transport_for(self, spec: ToolSpec) -> Transport:
        kind = spec.upstream.kind if spec.upstream is not None else "none"
        # "*" answers for every tool: in-memory upstreams in users' tests (interlock.testing).
        transport = self.transports.get("*") or self.transports.get(kind)
        if transport is None:
            raise NotFound(
                f"tool {spec.name} has no upstream this server can call ({kind})", code="no_upstream"
            )
        return transport

    def close(self) -> None:
        for kind in self.owned:
            self.transports[kind].close()


def build_runtime(
    loaded: LoadedManifest,
    *,
    extra_transports: dict[str, Transport] | None = None,
    shared_transports: dict[str, Transport] | None = None,
    egress: EgressPolicy | None = None,
) -> WorkflowRuntime:
    """``extra_transports`` become the runtime's own (closed with it); ``shared_transports`` (one
    HTTP client pool per server, say) are used but left open. ``egress`` is where the manifest's
    ``url`` MCP servers may connect; without one they are all refused (deny by default)."""
    compiled = compile_manifest(loaded)
    tools: dict[str, ToolRuntime] = {}
    for spec in loaded.manifest.tools:
        out = spec.output_schema
        tools[spec.name] = ToolRuntime(
            spec=spec,
            validator=jsonschema_rs.Draft202012Validator(spec.input_schema, validate_formats=True),
            output_validator=(
                jsonschema_rs.Draft202012Validator(out, validate_formats=True) if out is not None else None
            ),
            risk_conditions=tuple(
                (parse_condition(rc.when, spec.input_schema), tuple(rc.traits)) for rc in spec.risk_conditions
            ),
        )
    bound_tools: dict[tuple[str, str], tuple[ToolRuntime, dict[str, Any]] | None] = {}
    for spec in loaded.manifest.tools:
        system = bound_system(loaded.manifest, spec)
        if system is None:
            continue
        for env in loaded.manifest.environments:
            binding = system.bindings.get(env)
            bound_tools[(spec.name, env)] = (
                None
                if binding is None
                else (
                    replace(tools[spec.name], spec=bind_tool(spec, binding)),
                    binding_record(system, env, binding, spec),
                )
            )
    uses_classes = "data_classes" in compiled.text
    flow_tools = frozenset(
        spec.name for spec in loaded.manifest.tools if uses_classes or spec.destination is not None
    )
    transports: dict[str, Transport] = {"python": PythonTransport(base_dir=loaded.base_dir)}
    if loaded.manifest.mcp_servers:
        # Construction starts nothing: sessions open on the first call and close with the runtime.
        from interlock._internal.gateway.transports.mcp import McpTransport

        transports["mcp"] = McpTransport(
            loaded.manifest.mcp_servers,
            cwd=loaded.base_dir,
            base_dir=loaded.base_dir,
            egress=egress if egress is not None else EgressPolicy(),
        )
    transports.update(extra_transports or {})
    owned = tuple(transports)
    for kind, transport in (shared_transports or {}).items():
        transports.setdefault(kind, transport)
    runtime = WorkflowRuntime(
        loaded=loaded,
        compiled=compiled,
        tools=tools,
        transports=transports,
        owned=owned,
        bound_tools=bound_tools,
        flow_tools=flow_tools,
    )
    warm_visibility(runtime)  # every agent's tools/list, decided with the version
    return runtime
