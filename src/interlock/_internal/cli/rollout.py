"""``interlock rollout start | status | promote | abort``: a candidate manifest in shadow or as a
canary beside the active version.

Like ``interlock approvals``, these work on the database directly and act as a named operator
(``--as ID``): starting, promoting and aborting need ``admin`` or ``owner`` on the workflow, by
the same rules as the HTTP API (:mod:`interlock._internal.permissions`). Servers sharing the
database pick a rollout up at their next run start: the candidate's text is stored with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from interlock._internal.cli.approvals import (
    AsOpt,
    DbOpt,
    JsonOpt,
    RequiredAsOpt,
    _load_workflow,
    _opened,
    _operator,
)
from interlock._internal.cli.common import console, fail, print_json
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.rollouts.model import Rollout

app = typer.Typer(
    help="Rollouts: run a candidate manifest in shadow (judged on live traffic, never enforced) or as a "
    "canary (enforced for a share of new runs, named agents or triggers), see how its decisions differ, "
    "then promote or abort it.",
    no_args_is_help=True,
)

WorkflowArg = Annotated[str, typer.Argument(metavar="WORKFLOW", help="The workflow's name.")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", "-m", help="Why; kept in the audit log.")]


def _triggers(values: list[str], *, as_json: bool) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value:
            fail(
                f"--trigger {item!r}: use FIELD=VALUE, e.g. channel=email",
                as_json=as_json,
                error_code="invalid_request",
            )
        out.setdefault(name.strip(), []).append(value)
    return out


@app.command("start")
def start(
    manifest: Annotated[Path, typer.Option("--manifest", help="The candidate workflow manifest (YAML).")],
    as_operator: RequiredAsOpt,
    share: Annotated[
        float, typer.Option("--share", min=0, max=1, help="Share of new runs the candidate decides (canary).")
    ] = 0.0,
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", help="An agent whose new runs the candidate decides (repeat)."),
    ] = None,
    trigger: Annotated[
        list[str] | None,
        typer.Option(
            "--trigger", help="FIELD=VALUE: new runs whose trigger has it go to the candidate (repeat)."
        ),
    ] = None,
    max_denial_increase: Annotated[
        float | None,
        typer.Option(
            "--max-denial-increase",
            min=0,
            max=1,
            help="Abort when the candidate's denial rate exceeds the active's by more than this "
            "(0.05: 5 points).",
        ),
    ] = None,
    max_escalation_increase: Annotated[
        float | None,
        typer.Option("--max-escalation-increase", min=0, max=1, help="The same for the escalation rate."),
    ] = None,
    min_decisions: Annotated[
        int,
        typer.Option("--min-decisions", min=1, help="Compared decisions before a threshold can abort it."),
    ] = 20,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a rollout: shadow unless --share, --agent or --trigger makes it a canary."""
    from interlock._internal.manifest.loader import load_manifest
    from interlock._internal.operations import rollouts as ops

    triggers = _triggers(trigger or [], as_json=as_json)
    try:
        candidate = load_manifest(manifest)
    except InterlockError as exc:
        fail(str(exc), code=2, as_json=as_json, error_code=exc.code)
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        _load_workflow(il, candidate.manifest.name)
        rollout = ops.start(
            il,
            operator,
            candidate,
            share=share,
            agents=agent or [],
            triggers=triggers,
            max_denial_increase=max_denial_increase,
            max_escalation_increase=max_escalation_increase,
            min_decisions=min_decisions,
        )
    if as_json:
        print_json(rollout.as_dict())
        return
    console.print(
        f"started rollout [bold]{rollout.id}[/] of {escape(rollout.workflow)}: {_who(rollout)}",
        highlight=False,
    )
    console.print(
        f"candidate {escape(rollout.candidate_version_id)} beside {escape(rollout.active_version_id)}",
        highlight=False,
    )


@app.command("status")
def status(
    workflow: WorkflowArg,
    as_operator: AsOpt = None,
    examples: Annotated[int, typer.Option("--examples", min=0, max=50, help="Examples per transition.")] = 3,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How the candidate's decisions differ from the active version's on live traffic."""
    from interlock._internal.operations import rollouts as ops

    with _opened(db, as_json=as_json) as il:
        _load_workflow(il, workflow)
        if as_operator:
            report = ops.status(il, _operator(il, as_operator, as_json=as_json), workflow, examples=examples)
        else:
            report = il.rollouts.status(workflow, examples=examples)
    if as_json:
        print_json(report)
        return
    _print_status(report)


@app.command("promote")
def promote(
    workflow: WorkflowArg,
    as_operator: RequiredAsOpt,
    reason: ReasonOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make the candidate the active version, for every run."""
    rollout = _end("promote", workflow, as_operator, reason=reason, db=db, as_json=as_json)
    if rollout is not None:
        console.print(
            f"promoted rollout [bold]{rollout.id}[/]: {escape(rollout.candidate_version_id)} is now the "
            f"active version of {escape(workflow)}",
            highlight=False,
        )


@app.command("abort")
def abort(
    workflow: WorkflowArg,
    as_operator: RequiredAsOpt,
    reason: ReasonOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End the rollout: every run, canary ones included, goes back to the active version."""
    rollout = _end("abort", workflow, as_operator, reason=reason, db=db, as_json=as_json)
    if rollout is not None:
        console.print(
            f"aborted rollout [bold]{rollout.id}[/]: every run of {escape(workflow)} is back on "
            f"{escape(rollout.active_version_id)}",
            highlight=False,
        )


def _end(
    how: str, workflow: str, as_operator: str, *, reason: str | None, db: str | None, as_json: bool
) -> Rollout | None:
    """Promote or abort as ``as_operator``; the rollout to describe, or None once printed as JSON."""
    from interlock._internal.operations import rollouts as ops

    end = ops.promote if how == "promote" else ops.abort
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json)
        _load_workflow(il, workflow)
        rollout = end(il, operator, workflow, reason=reason)
    if as_json:
        print_json(rollout.as_dict())
        return None
    return rollout


def _who(rollout: Rollout) -> str:
    if rollout.mode == "shadow":
        return "shadow (the candidate judges every new run, never enforced)"
    parts = []
    if rollout.share:
        parts.append(f"{rollout.share:.0%} of new runs")
    if rollout.agents:
        parts.append("agents " + ", ".join(escape(a) for a in rollout.agents))
    for name, values in rollout.triggers.items():
        parts.append(f"triggers with {escape(name)} in {', '.join(escape(v) for v in values)}")
    return "canary for " + "; ".join(parts)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _print_status(report: dict[str, Any]) -> None:
    r = report["rollout"]
    line = f"rollout [bold]{r['id']}[/] of {escape(r['workflow'])}: {r['mode']}, {r['state']}"
    if r["state"] != "running":
        line += f" by {escape(r['ended_by'] or '?')} at {_when(r['ended_at'])}"
        if r["end_reason"]:
            line += f" ({escape(r['end_reason'])})"
    console.print(line, highlight=False, soft_wrap=True)
    console.print(
        f"candidate {escape(r['candidate_version'])} vs active {escape(r['active_version'])}", highlight=False
    )
    total, changed = report["total"], report["changed"]
    console.print(
        f"{total} compared decisions: {report['unchanged']} unchanged, {changed} changed "
        f"({report['change_rate']:.1%})",
        highlight=False,
    )
    for label, count in report["transitions"].items():
        console.print(f"  {escape(report['labels'][label])}: {count}", highlight=False)
        for ex in report["examples"].get(label, []):
            new = ", ".join(escape(x.get("policy_id") or x.get("code", "?")) for x in ex["new_reasons"])
            console.print(
                f"    {escape(ex['tool'])} in {ex['run_id']} ({ex['enforced']} enforced): {new}",
                highlight=False,
                style="dim",
            )
    rates = r["rates"]
    console.print(
        f"denial rate: active {rates['active_denial']:.1%}, candidate {rates['candidate_denial']:.1%}; "
        f"escalation rate: active {rates['active_escalation']:.1%}, "
        f"candidate {rates['candidate_escalation']:.1%}",
        highlight=False,
    )
    runs = report["runs_by_version"]
    on_candidate = runs.get(r["candidate_version"], 0)
    console.print(
        f"runs: {on_candidate} on the candidate, {sum(runs.values()) - on_candidate} on the active version",
        highlight=False,
    )
