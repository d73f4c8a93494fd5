"""Manifest → Cedar: a policy set, a Cedar schema and the static entities, built once per version.

One request decides an action. The policy set holds four kinds of policy, told apart by the
prefix of their ``@id``:

- ``grant:*`` — one ``forbid … unless`` listing what each role may attempt at all;
- ``forbid:*`` — forbid rules; in Cedar, forbid always wins over permit;
- ``allow:*`` — permits that let an action run without a person;
- ``review:*`` — permits that let an action run only after approval;
- ``settle:*`` and ``never-settle:*`` — permits and forbids on the verb ``verify``: what a verifier
  agent may settle alone (see :mod:`interlock._internal.policy.verify`).

Cedar answers Allow with every satisfied permit as a reason; a ``review:`` reason among them means
approval is required. Deny with no reasons is deny-by-default. Users' own ``.cedar`` files join the
set: their forbids apply as written, and a permit whose ``@id`` starts with ``review:`` asks for
approval while any other permit allows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cedarpy

from interlock._internal.audit.canonical import sha256_hex
from interlock._internal.manifest.conditions import parse_condition
from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.manifest.models import VERBS, VERIFY, Manifest, RuleSpec, SettleRule, ToolSpec
from interlock._internal.policy.cedar_values import record_attributes
from interlock._internal.policy.slices import PolicySlices, VisibilitySet
from interlock.exceptions import PolicyError

NS = "Interlock"
CONTEXT_ATTRS: dict[str, Any] = {
    "workflow": {"type": "String"},
    "environment": {"type": "String"},
    "tool": {"type": "String"},
    "risk": {"type": "Set", "element": {"type": "String"}},
    "steps": {"type": "Long"},
    "tool_calls": {"type": "Long"},
    "confidence": {"type": "Extension", "name": "decimal", "required": False},
    # The data classes the run carries (what earlier steps brought in: pii, financial, ...).
    "data_classes": {"type": "Set", "element": {"type": "String"}},
}


@dataclass(frozen=True)
class CompiledPolicy:
    text: str
    schema: dict[str, Any]
    entities: list[dict[str, Any]]
    sha256: str
    policy_set: Any = field(repr=False)  # cedarpy.PolicySet, parsed once
    entity_set: Any = field(repr=False)  # cedarpy.Entities, parsed once
    ids: dict[str, str] = field(default_factory=dict)  # cedar positional id → @id
    slices: PolicySlices | None = field(default=None, repr=False)  # None: evaluate the whole set

    def for_tool(self, tool: str) -> tuple[Any, Any]:
        """The policies and entities a request on ``tool`` needs (see slices.py)."""
        if self.slices is None:
            return self.policy_set, self.entity_set
        return self.slices.for_tool(tool)

    def visibility(self) -> VisibilitySet:
        """What ``tools/list`` evaluates (see slices.py): without slices, every tool on its own
        against the whole set."""
        if self.slices is None:
            tools = {
                e["uid"]["id"]: e["uid"]["id"] for e in self.entities if e["uid"]["type"] == f"{NS}::Tool"
            }
            return VisibilitySet(first=tools, policy_set=self.policy_set, entity_set=self.entity_set)
        vis = self.slices.visibility
        return VisibilitySet(first=vis.first, policy_set=vis.policy_set, entity_set=self.entity_set)


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid, fully escaped Cedar string literal


def _uid(kind: str, ident: str) -> str:
    return f"{NS}::{kind}::{_q(ident)}"


def uses_verify(manifest: Manifest) -> bool:
    """Whether the manifest speaks of the verb ``verify`` at all. Only then does the compiled
    policy carry the action, so every other manifest compiles to exactly what it did before."""
    return manifest.verification is not None or any(VERIFY in g.verbs for g in manifest.roles.values())


def _args_record(tools: list[ToolSpec]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    conflicts: set[str] = set()
    for tool in tools:
        for name, typ in record_attributes(tool.input_schema).items():
            if name in args and args[name] != typ:
                conflicts.add(name)
            args.setdefault(name, typ)
    for name in conflicts:
        # Two tools type the argument differently; Cedar needs one type.
        del args[name]
    return args


def cedar_schema(manifest: Manifest) -> dict[str, Any]:
    actions: dict[str, Any] = {}
    for verb in VERBS:
        args = _args_record([tool for tool in manifest.tools if tool.verb == verb])
        actions[verb] = {
            "appliesTo": {
                "principalTypes": ["Agent"],
                "resourceTypes": ["Tool"],
                "context": {
                    "type": "Record",
                    "attributes": {**CONTEXT_ATTRS, "args": {"type": "Record", "attributes": args}},
                },
            }
        }
    if uses_verify(manifest):
        # A verifier judging another agent's action: the action's own context, plus the verb
        # it would perform and the verdict being weighed; its arguments as every tool types them.
        actions[VERIFY] = {
            "appliesTo": {
                "principalTypes": ["Agent"],
                "resourceTypes": ["Tool"],
                "context": {
                    "type": "Record",
                    "attributes": {
                        **CONTEXT_ATTRS,
                        "verb": {"type": "String"},
                        "verdict": {"type": "String"},
                        "args": {"type": "Record", "attributes": _args_record(list(manifest.tools))},
                    },
                },
            }
        }
    str_t = {"type": "String"}
    return {
        NS: {
            "entityTypes": {
                "Role": {},
                "Agent": {
                    "memberOfTypes": ["Role"],
                    "shape": {
                        "type": "Record",
                        "attributes": {"workflow": str_t, "environment": str_t},
                    },
                },
                "Tool": {
                    "shape": {
                        "type": "Record",
                        "attributes": {
                            "workflow": str_t,
                            "verb": str_t,
                            "traits": {"type": "Set", "element": str_t},
                            "returns": {"type": "Set", "element": str_t},
                            # Absent for a tool that names no system: test with `resource has system`.
                            "system": {"type": "Entity", "name": "System", "required": False},
                        },
                    }
                },
                "System": {
                    "shape": {
                        "type": "Record",
                        "attributes": {
                            "owner": str_t,
                            "tier": {"type": "Long"},
                            "data_classes": {"type": "Set", "element": str_t},
                            "environments": {"type": "Set", "element": str_t},
                        },
                    }
                },
            },
            "actions": actions,
        }
    }


def entities(manifest: Manifest) -> list[dict[str, Any]]:
    roles = {r for a in manifest.agents for r in a.roles} | set(manifest.roles)
    out: list[dict[str, Any]] = [
        {"uid": {"type": f"{NS}::Role", "id": r}, "attrs": {}, "parents": []} for r in sorted(roles)
    ]
    for agent in manifest.agents:
        out.append(
            {
                "uid": {"type": f"{NS}::Agent", "id": agent.id},
                "attrs": {"workflow": manifest.name, "environment": agent.environment},
                "parents": [{"type": f"{NS}::Role", "id": r} for r in agent.roles],
            }
        )
    for system in manifest.systems:
        out.append(
            {
                "uid": {"type": f"{NS}::System", "id": system.name},
                "attrs": {
                    "owner": system.owner,
                    "tier": system.tier,
                    "data_classes": sorted(system.data_classes),
                    "environments": sorted(system.bindings),
                },
                "parents": [],
            }
        )
    for tool in manifest.tools:
        attrs: dict[str, Any] = {
            "workflow": manifest.name,
            "verb": tool.verb,
            "traits": sorted(tool.traits),
            "returns": sorted(tool.returns),
        }
        if tool.system is not None:
            attrs["system"] = {"__entity": {"type": f"{NS}::System", "id": tool.system}}
        out.append({"uid": {"type": f"{NS}::Tool", "id": tool.name}, "attrs": attrs, "parents": []})
    return out


def _grant_policy(manifest: Manifest) -> str:
    clauses = []
    for role, grant in sorted(manifest.roles.items()):
        principal = f"principal in {_uid('Role', role)}"
        if grant.verbs:
            verbs = ", ".join(_uid("Action", v) for v in grant.verbs)
            clauses.append(f"({principal} && action in [{verbs}])")
        if grant.tools:
            tools = ", ".join(_uid("Tool", t) for t in grant.tools)
            clauses.append(f"({principal} && [{tools}].contains(resource))")
    body = " || ".join(clauses) if clauses else "false"
    return f'@id("grant:role-grants")\nforbid (principal, action, resource)\nunless {{ {body} }};'


def _rule_policies(kind: str, prefix: str, index: int, rule: RuleSpec, manifest: Manifest) -> list[str]:
    rule_id = f"{prefix}:{rule.id or f'{kind}[{index}]'}"
    effect = "forbid" if prefix == "forbid" else "permit"
    verbs = rule.verb_list()
    base: list[str] = []
    if verbs:
        base.append("[" + ", ".join(_uid("Action", v) for v in verbs) + "].contains(action)")
    traits = rule.trait_list()
    if traits:
        base.append("context.risk.containsAny([" + ", ".join(_q(t) for t in traits) + "])")
    if rule.roles:
        base.append("(" + " || ".join(f"principal in {_uid('Role', r)}" for r in rule.roles) + ")")
    if rule.environments:
        base.append("[" + ", ".join(_q(e) for e in rule.environments) + "].contains(context.environment)")
    tools = rule.tool_list()
    targets: list[ToolSpec | None] = [manifest.tool(t) for t in tools] if tools else [None]
    out = []
    for tool in targets:
        conds = list(base)
        resource = "resource"
        if tool is not None:
            resource = f"resource == {_uid('Tool', tool.name)}"
        if rule.when is not None:
            if tool is None:
                raise PolicyError("a rule with 'when' must name its tool", field=f"rules.{kind}[{index}]")
            try:
                conds.append("(" + parse_condition(rule.when, tool.input_schema).to_cedar() + ")")
            except ValueError as exc:
                raise PolicyError(str(exc), field=f"rules.{kind}[{index}].when") from exc
        when = f"\nwhen {{ {' && '.join(conds)} }}" if conds else ""
        out.append(f"@id({_q(rule_id)})\n{effect} (principal, action, {resource}){when};")
    return out


def _settle_policies(kind: str, index: int, rule: SettleRule, manifest: Manifest) -> list[str]:
    """One ``settle:`` permit or ``never-settle:`` forbid on the verb ``verify``."""
    prefix = "settle" if kind == "settle" else "never-settle"
    effect = "permit" if kind == "settle" else "forbid"
    field = f"verification.{kind}[{index}]"
    base: list[str] = []
    verbs = rule.verb_list()
    if verbs:
        base.append("[" + ", ".join(_q(v) for v in verbs) + "].contains(context.verb)")
    traits = rule.trait_list()
    if traits:
        base.append("context.risk.containsAny([" + ", ".join(_q(t) for t in traits) + "])")
    verdicts = rule.verdict_list()
    if verdicts:
        base.append("[" + ", ".join(_q(v) for v in verdicts) + "].contains(context.verdict)")
    if rule.verifiers:
        base.append("(" + " || ".join(f"principal == {_uid('Agent', a)}" for a in rule.verifiers) + ")")
    tools = rule.tool_list()
    targets: list[ToolSpec | None] = [manifest.tool(t) for t in tools] if tools else [None]
    out = []
    for tool in targets:
        conds = list(base)
        resource = "resource" if tool is None else f"resource == {_uid('Tool', tool.name)}"
        if rule.when is not None:
            if tool is None:
                raise PolicyError("a rule with 'when' must name its tool", field=field)
            try:
                conds.append("(" + parse_condition(rule.when, tool.input_schema).to_cedar() + ")")
            except ValueError as exc:
                raise PolicyError(str(exc), field=f"{field}.when") from exc
        when = f"\nwhen {{ {' && '.join(conds)} }}" if conds else ""
        action = f"action == {_uid('Action', VERIFY)}"
        out.append(f"@id({_q(f'{prefix}:{rule.id}')})\n{effect} (principal, {action}, {resource}){when};")
    return out


def generated_policies(manifest: Manifest) -> list[str]:
    policies = [_grant_policy(manifest)]
    for prefix, kind, rules in (
        ("forbid", "forbid", manifest.rules.forbid),
        ("review", "require_approval", manifest.rules.require_approval),
        ("allow", "allow", manifest.rules.allow),
    ):
        for i, rule in enumerate(rules):
            policies.extend(_rule_policies(kind, prefix, i, rule, manifest))
    if manifest.verification is not None:
        for kind in ("never_settle", "settle"):
            for i, settle in enumerate(getattr(manifest.verification, kind)):
                policies.extend(_settle_policies(kind, i, settle, manifest))
    return policies


def compile_manifest(loaded: LoadedManifest) -> CompiledPolicy:
    """Compile and validate; a policy that fails to parse or validate stops the load."""
    manifest = loaded.manifest
    schema = cedar_schema(manifest)
    schema_json = json.dumps(schema)
    parts = ["// generated from " + loaded.version_id, *generated_policies(manifest)]
    _check(parts[1:], schema_json, file=str(loaded.path or "<manifest>"), what="generated policy")
    for rel in manifest.policies:
        path = (loaded.base_dir / rel).resolve()
        try:
            user_text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy file: {exc.strerror}", file=str(path)) from exc
        _check([user_text], schema_json, file=str(path), what="policy")
        parts.append(f"// from {rel}\n{user_text}")
    text = "\n\n".join(parts) + "\n"
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
        ents = entities(manifest)
        entity_set = cedarpy.Entities.from_json_str(json.dumps(ents), schema_json)
    except ValueError as exc:
        raise PolicyError(f"Cedar rejected the compiled policy: {exc}", file=str(loaded.path)) from exc
    try:
        slices: PolicySlices | None = PolicySlices(text, ents, schema_json)
    except ValueError:  # a construct the slicer does not read: every request sees the whole set
        slices = None
    return CompiledPolicy(
        text=text,
        schema=schema,
        entities=ents,
        sha256=sha256_hex(text.encode() + schema_json.encode()),
        policy_set=policy_set,
        entity_set=entity_set,
        slices=slices,
    )


def _check(texts: list[str], schema_json: str, *, file: str, what: str) -> None:
    text = "\n".join(texts)
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        raise PolicyError(f"{what} does not parse: {exc}", file=file) from exc
    result = cedarpy.validate_policies(text, schema_json)
    if not result.validation_passed:
        names = result.id_annotations_by_policy_id
        first = result.errors[0]
        who = names.get(first.policy_id, first.policy_id)
        raise PolicyError(f"{what} {who!r} fails validation against the schema: {first.error}", file=file)
