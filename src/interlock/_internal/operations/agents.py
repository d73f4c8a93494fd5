"""Agents checked against the operating model: an agent is created for what the manifest declares."""

from __future__ import annotations

import difflib

from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.service import Interlock


def manifest_mismatch(
    il: Interlock, agent_id: str, *, workflow: str, environment: str, manifest: LoadedManifest | None = None
) -> str | None:
    """What is wrong with creating this agent, by ``manifest`` or else the workflow's active one
    in the database; None if nothing."""
    if manifest is not None and manifest.manifest.name != workflow:
        return f"{manifest.path} is workflow {manifest.manifest.name!r}, not {workflow!r}"
    loaded = manifest if manifest is not None else il.active_manifest(workflow)
    if loaded is None:
        known = il.known_workflows()
        close = difflib.get_close_matches(workflow, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"
        return f"no workflow {workflow!r} has been loaded on this database{hint}"
    declared = {a.id: a for a in loaded.manifest.agents}
    agent = declared.get(agent_id)
    if agent is None:
        close = difflib.get_close_matches(agent_id, list(declared), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; it declares: {', '.join(declared) or 'none'}"
        return f"workflow {workflow!r} does not declare an agent {agent_id!r}{hint}"
    if agent.environment != environment:
        return (
            f"workflow {workflow!r} gives agent {agent_id!r} the environment {agent.environment!r}, "
            f"not {environment!r}"
        )
    return None


__all__ = ["manifest_mismatch"]
