"""``interlock workflow``: check a manifest, and read its operating model at a glance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from interlock._internal.cli.common import console, print_json
from interlock._internal.manifest.loader import LoadedManifest, load_manifest
from interlock._internal.manifest.models import Manifest
from interlock._internal.manifest.operating_model import operating_model
from interlock._internal.manifest.preflight import check_references
from interlock._internal.policy.compiler import compile_manifest
from interlock.exceptions import ManifestError

app = typer.Typer(
    help="Workflow manifests: validate them, and show what an agent may do.",
    no_args_is_help=True,
)

FileArg = Annotated[Path, typer.Argument(help="The workflow manifest (YAML).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

# A file that cannot be read is a usage problem (exit 2, like a bad flag); a file that can be
# read but is wrong is a failed check (exit 1), which is what CI gates on.
_UNREADABLE = ("manifest_not_found", "manifest_unreadable")


def _load(file: Path, *, as_json: bool) -> LoadedManifest:
    try:
        loaded = load_manifest(file)
        # Compiling proves the rules and any .cedar files parse and validate against the schema.
        compile_manifest(loaded)
        return loaded
    except ManifestError as exc:
        if as_json:
            print_json({"valid": False, "error": _error(exc)})
        else:
            # Plain text, not Rich: the message quotes the author's values, which must not be
            # read as markup, and `file:line:` must start the line for editors to jump to it.
            sys.stderr.write(f"{exc}\n")
        raise typer.Exit(2 if exc.code in _UNREADABLE else 1) from None


def _error(exc: ManifestError) -> dict[str, Any]:
    return {"code": exc.code, "file": exc.file, "line": exc.line, "field": exc.field, "message": exc.reason}


@app.command()
def validate(file: FileArg, as_json: JsonOpt = False) -> None:
    """Check a manifest: exit 0 when valid, 1 with `file:line: field: message` when not.

    Beyond the manifest itself: every Python callable is imported, every file it names (golden set,
    policies) must exist, and every MCP server's command must be found."""
    loaded = _load(file, as_json=as_json)
    manifest = loaded.manifest
    problems = check_references(loaded)
    if problems:
        if as_json:
            errors = [_error(p) for p in problems]
            print_json({"valid": False, "error": errors[0], "errors": errors})
        else:
            sys.stderr.write("".join(f"{p}\n" for p in problems))
        raise typer.Exit(1)
    if as_json:
        print_json(
            {
                "valid": True,
                "name": manifest.name,
                "version": manifest.version,
                "tools": len(manifest.tools),
                "agents": len(manifest.agents),
                "version_id": loaded.version_id,
                "sha256": loaded.sha256,
            }
        )
        return
    sys.stdout.write(
        f"valid: {manifest.name} {manifest.version}: {_count(len(manifest.tools), 'tool')}, "
        f"{_count(len(manifest.agents), 'agent')} ({loaded.version_id})\n"
    )


@app.command()
def show(file: FileArg, as_json: JsonOpt = False) -> None:
    """Show the operating model: owner, objective, tools, what needs approval, budgets."""
    loaded = _load(file, as_json=as_json)
    model = operating_model(loaded)
    if as_json:
        print_json(model)
    else:
        _print_model(loaded.manifest, model)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_model(m: Manifest, model: dict[str, Any]) -> None:
    out = console
    out.print(f"[bold]{escape(m.name)}[/] {escape(m.version)}  [dim]{escape(model['version_id'])}[/]")
    out.print(f"[bold]Owner:[/] {escape(m.owner)}")
    out.print(f"[bold]Objective:[/] {escape(model['objective'])}")
    metric = m.success_metric
    target = f" (target {metric.target:g}{' ' + metric.unit if metric.unit else ''})" if metric.target else ""
    out.print(f"[bold]Success metric:[/] {escape(metric.name + target)}")
    if m.out_of_scope:
        out.print(f"[bold]Out of scope:[/] {escape('; '.join(m.out_of_scope))}")
    out.print(f"[bold]Environments:[/] {escape(', '.join(m.environments))}")
    agents = [f"{a.id} ({a.environment}; {', '.join(a.roles)})" for a in m.agents]
    out.print(f"[bold]Agents:[/] {escape(', '.join(agents)) if agents else 'none'}")

    table = Table(title="Tools", title_justify="left", show_lines=False)
    table.add_column("tool")
    table.add_column("verb")
    table.add_column("traits")
    table.add_column("gains traits when")
    for tool in m.tools:
        risks = "; ".join(f"{r.when} → {', '.join(r.traits)}" for r in tool.risk_conditions)
        table.add_row(escape(tool.name), tool.verb, ", ".join(tool.traits) or "-", escape(risks) or "-")
    out.print(table)

    for title, key in (
        ("Runs without approval", "runs_without_approval"),
        ("Needs approval", "needs_approval"),
        ("Forbidden", "forbidden"),
    ):
        out.print(f"[bold]{title}:[/]")
        rules = model[key]
        if not rules:
            out.print("  [dim]none[/]")
        for rule in rules:
            label = f"{rule['id']}: " if rule["id"] else ""
            note = f" — {rule['description']}" if rule["description"] else ""
            out.print(f"  • {escape(label + rule['applies_to'] + note)}")
    if m.stop_rules:
        out.print("[bold]Stop rules (escalate to a person):[/]")
        for stop in m.stop_rules:
            tools = f" on {', '.join(stop.tool_list())}" if stop.tool is not None else ""
            note = f" — {stop.description}" if stop.description else ""
            out.print(f"  • {escape(f'{stop.id}: {stop.kind}{tools}{note}')}")
    out.print(f"[bold]Budget per run:[/] {escape(_budget(m))}")
    approvals = m.approvals
    out.print(
        f"[bold]Approvals:[/] quorum {approvals.quorum}, expire after {approvals.expires_after_s} s, "
        f"approvers: {escape(', '.join(approvals.approver_roles))}"
        + ("" if approvals.allow_self_approval else ", no self-approval")
    )
    if m.pause_owners:
        out.print(f"[bold]May pause:[/] {escape(', '.join(m.pause_owners))}")


def _budget(m: Manifest) -> str:
    budget = m.budgets.per_run
    parts = []
    if budget.max_steps is not None:
        parts.append(_count(budget.max_steps, "step"))
    if budget.max_tool_calls is not None:
        parts.append(_count(budget.max_tool_calls, "tool call"))
    if budget.max_cost_usd is not None:
        parts.append(f"${budget.max_cost_usd:,.2f}")
    if budget.max_duration_s is not None:
        parts.append(f"{budget.max_duration_s:g} s")
    return ", ".join(parts) or "no limits"


__all__ = ["app", "show", "validate"]
