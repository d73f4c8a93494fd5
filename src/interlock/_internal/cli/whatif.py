"""``interlock whatif``: what a candidate manifest would have decided about recorded actions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from interlock._internal.cli.common import (
    console,
    err_console,
    fail,
    opened_database,
    print_json,
)
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.evals.whatif import WhatIfReport

# Exit 1 is "the candidate changes too much" (the gate); a command that could not run exits 2.
_ERROR = 2


def whatif(
    manifest: Annotated[Path, typer.Option("--manifest", help="The candidate workflow manifest (YAML).")],
    since: Annotated[
        str | None, typer.Option("--since", help="Only decisions since: 7d, 24h, 90m or an ISO date.")
    ] = "7d",
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    max_changes: Annotated[
        int | None, typer.Option("--max-changes", min=0, help="Exit 1 when more decisions than this change.")
    ] = None,
    max_change_rate: Annotated[
        float | None,
        typer.Option("--max-change-rate", min=0, max=1, help="Exit 1 when this share of decisions changes."),
    ] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, max=50, help="Examples per transition.")] = 3,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, max=64, help="Worker processes (default: CPU count).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Also write the result as JUnit XML (the change gate is a case)."),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Also write a Markdown summary for a pull-request comment."),
    ] = None,
) -> None:
    """Re-judge recorded decisions under a candidate manifest and count what would change."""
    from interlock._internal.evals.whatif import parse_since, what_if
    from interlock._internal.manifest.loader import load_manifest

    try:
        candidate = load_manifest(manifest)
        start = parse_since(since) if since and since.lower() not in ("all", "0") else None
        with (
            opened_database(db, as_json=as_json) as engine,
            Progress(
                TextColumn("re-judging decisions"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
                disable=as_json or not err_console.is_terminal,
            ) as bar,
        ):
            task = bar.add_task("what-if", total=None)
            report = what_if(
                engine,
                candidate,
                since=start,
                workers=workers,
                examples=examples,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except InterlockError as exc:
        fail(str(exc), code=_ERROR, as_json=as_json, error_code=exc.code)
    exceeded = report.exceeds(max_changes=max_changes, max_change_rate=max_change_rate)
    _ci_outputs(
        report,
        junit=junit,
        summary=summary,
        gate={"max_changes": max_changes, "max_change_rate": max_change_rate, "exceeded": exceeded},
        as_json=as_json,
    )
    if as_json:
        data = report.as_dict()
        data["threshold"] = {
            "max_changes": max_changes,
            "max_change_rate": max_change_rate,
            "exceeded": exceeded,
        }
        print_json(data)
    else:
        _print(report, since=since)
        if exceeded:
            limit = f"max {max_changes}" if max_changes is not None else f"max rate {max_change_rate:.2%}"
            err_console.print(f"[bold red]gate:[/] {report.changed} changes exceed {limit}", highlight=False)
    if exceeded:
        raise typer.Exit(1)


def _ci_outputs(
    report: WhatIfReport, *, junit: Path | None, summary: Path | None, gate: dict[str, Any], as_json: bool
) -> None:
    from interlock._internal.evals.ci import whatif_junit, whatif_markdown, write

    try:
        if junit is not None:
            write(junit, whatif_junit(report, **gate))
        if summary is not None:
            write(summary, whatif_markdown(report, **gate))
    except OSError as exc:
        fail(
            f"cannot write {exc.filename}: {exc.strerror}",
            code=_ERROR,
            as_json=as_json,
            error_code="write_failed",
        )


def _print(report: WhatIfReport, *, since: str | None) -> None:
    from interlock._internal.evals.whatif import LABELS

    window = f"since {since}" if since else "all time"
    console.print(
        f"{report.workflow}: {report.total} recorded decisions ({window}) "
        f"judged by {report.candidate_version} "
        f"in {report.elapsed_s:.1f}s ({report.distinct} distinct)",
        highlight=False,
    )
    console.print(
        f"  unchanged {report.unchanged}   held as recorded (brakes, limits) {report.held}   "
        f"not comparable (redacted) {report.not_comparable}   "
        f"[bold]changed {report.changed}[/] ({report.change_rate:.2%})",
        highlight=False,
    )
    if not report.transitions:
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("transition")
    table.add_column("decisions", justify="right")
    for label, count in sorted(report.transitions.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(LABELS.get(label, label.replace("->", " → ")), str(count))
    console.print(table)
    for label in sorted(report.examples):
        console.print(f"[bold]{escape(LABELS.get(label, label))}[/], for example:", highlight=False)
        for example in report.examples[label]:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(example["recorded_at"]))
            old = ", ".join(r["code"] for r in example["old_reasons"])
            new = ", ".join(
                r["code"] + (f" [{r['policy_id']}]" if r.get("policy_id") else "")
                for r in example["new_reasons"]
            )
            args = json.dumps(example["arguments"], ensure_ascii=False, sort_keys=True)
            if len(args) > 160:
                args = args[:157] + "..."
            console.print(
                f"  {when} {escape(example['agent_id'])} {escape(example['tool'])} {escape(args)}\n"
                f"      was: {escape(old)}\n      now: {escape(new)}",
                highlight=False,
            )


app = typer.Typer(help="Policy what-if over recorded decisions.")
app.command()(whatif)
