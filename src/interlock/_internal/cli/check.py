"""``interlock check``: a dry-run decision that executes nothing and records nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from interlock._internal.cli.common import console, fail, fail_from, print_json
from interlock.exceptions import InterlockError


def check(
    file: Annotated[Path, typer.Argument(help="Workflow manifest (YAML).")],
    agent: Annotated[str, typer.Option("--agent", help="Agent id from the manifest.")],
    tool: Annotated[str, typer.Option("--tool", help="Tool name.")],
    args: Annotated[str, typer.Option("--args", help="Arguments as a JSON object.")] = "{}",
    env: Annotated[str | None, typer.Option("--env", help="Environment (default: the agent's).")] = None,
    confidence: Annotated[float | None, typer.Option("--confidence", min=0, max=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Decide an action under a manifest without executing it: allow, deny, require_approval or escalate."""
    from interlock._internal.gateway.runtime import build_runtime
    from interlock._internal.manifest.loader import load_manifest
    from interlock._internal.service import check_decision

    try:
        arguments: Any = json.loads(args)
    except json.JSONDecodeError as exc:
        fail(f"--args is not valid JSON: {exc}", as_json=as_json, error_code="invalid_json")
    if not file.is_file():
        fail(f"{file}: no such file", code=2, as_json=as_json, error_code="not_found")
    try:
        runtime = build_runtime(load_manifest(file))
        decision = check_decision(
            runtime, agent=agent, tool=tool, arguments=arguments, environment=env, confidence=confidence
        )
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json(decision.model_dump(mode="json"))
        return
    colour = {"allow": "green", "deny": "red", "require_approval": "yellow", "escalate": "magenta"}
    console.print(
        f"[bold {colour[decision.decision]}]{decision.decision}[/] {escape(tool)} ({decision.verb or '?'})"
    )
    for reason in decision.reasons:
        who = f" [{reason.policy_id}]" if reason.policy_id else ""
        console.print(escape(f"  - {reason.code}{who}: {reason.message}"), highlight=False)
    if decision.risk:
        console.print(f"  risk: {', '.join(decision.risk)}")
    console.print(
        f"  manifest {decision.manifest_version}  policy {str(decision.policy_version)[:12]}", style="dim"
    )
