"""The Systems page (the system graph, and per system who may do what and this week's activity)
and the executive page (the fleet's figures). Both read services only and show the workflows the
operator holds a role on."""

from __future__ import annotations

from datetime import date
from typing import Any

from interlock._internal.evals.fleet import fleet_figures, view_rows
from interlock._internal.evals.weekly import default_week_ending
from interlock._internal.gateway.bindings import credential_ref
from interlock._internal.identity.operators import Operator
from interlock._internal.manifest.models import Manifest
from interlock._internal.permissions import may_view
from interlock._internal.service import Interlock
from interlock._internal.systems.graph import build_graph
from interlock._internal.systems.service import activity, layout


def _visible(interlock: Interlock, operator: Operator) -> list[Manifest]:
    return [rt.manifest for rt in interlock.workflows if may_view(operator, rt.name)]


def systems_page(interlock: Interlock, operator: Operator) -> dict[str, Any]:
    manifests = _visible(interlock, operator)
    graph = build_graph(manifests)
    recent = activity(interlock.engine, manifests)
    specs = {s.name: s for m in manifests for s in m.systems}
    names = sorted(set(specs) | set(graph["access"]) | set(recent))
    systems = []
    for name in names:
        spec = specs.get(name)
        bindings = []
        if spec is not None:
            for env, binding in sorted(spec.bindings.items()):
                endpoint = binding.url or (f"mcp:{binding.mcp_server}" if binding.mcp_server else None)
                bindings.append(
                    {
                        "environment": env,
                        "endpoint": endpoint,
                        "credential": credential_ref(binding.credential),
                    }
                )
        systems.append(
            {
                "name": name,
                "tier": None if spec is None else spec.tier,
                "owner": None if spec is None else spec.owner,
                "data_classes": [] if spec is None else sorted(spec.data_classes),
                "bindings": bindings,
                "access": dict(sorted(graph["access"].get(name, {}).items())),
                "activity": dict(sorted(recent.get(name, {}).items())),
            }
        )
    return {"g": layout(graph), "systems": systems}


def executive_page(
    interlock: Interlock, operator: Operator, *, week_ending: date | None = None
) -> dict[str, Any]:
    report = fleet_figures(
        interlock.engine, _visible(interlock, operator), week_ending or default_week_ending()
    )
    return {"r": report, "v": view_rows(report)}


__all__ = ["executive_page", "systems_page"]
