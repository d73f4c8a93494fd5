"""``interlock report``: the weekly review of a workflow, as HTML and JSON."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from interlock._internal.cli.common import (
    console,
    err_console,
    fail,
    fail_from,
    opened_database,
    print_json,
)
from interlock.exceptions import InterlockError

app = typer.Typer(
    help="Reports: the weekly review of a workflow, the fleet's executive view.", no_args_is_help=True
)


@app.callback()
def _group() -> None:
    """Reports: the weekly review of a workflow, the fleet's executive view."""


@app.command()
def weekly(
    workflow: Annotated[str, typer.Argument(help="The workflow to review.", show_default=False)],
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    week_ending: Annotated[
        str | None,
        typer.Option("--week-ending", help="Last day of the week, YYYY-MM-DD (UTC; default: yesterday)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the .html and .json files.")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Write weekly-<workflow>-<date>.html and .json: figures, deltas, charts and a recommendation."""
    from interlock._internal.evals.weekly import default_week_ending, write_weekly_report

    try:
        day = date.fromisoformat(week_ending) if week_ending else default_week_ending()
    except ValueError:
        fail(f"--week-ending {week_ending!r}: expected YYYY-MM-DD", code=2, as_json=as_json)
    try:
        with (
            opened_database(db, as_json=as_json) as engine,
            err_console.status("computing the weekly review…"),
        ):
            html_path, json_path, report = write_weekly_report(engine, workflow, week_ending=day, out_dir=out)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json({**report, "files": {"html": str(html_path), "json": str(json_path)}})
        return
    rec = report["recommendation"]
    console.print(f"wrote {html_path} and {json_path}", highlight=False)
    console.print(
        f"recommendation: {rec['label']} (rule {rec['rule_number']}: {rec['rule']})", highlight=False
    )
    for agent in report["calibration"]["agents"]:
        if agent["enough_data"]:
            shown = f"{agent['verdict']}, expected calibration error {agent['ece'] * 100:.1f} points"
        else:
            shown = "not enough data"
        console.print(
            f"calibration of {agent['agent']}: {shown} ({agent['samples']} judged actions)", highlight=False
        )


@app.command()
def fleet(
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    week_ending: Annotated[
        str | None,
        typer.Option("--week-ending", help="Last day of the week, YYYY-MM-DD (UTC; default: yesterday)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the .html and .json files.")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Write fleet-<date>.html and .json: every workflow's autonomy, approvals, escalations, denials,
    spend against budget, cost per task and change from baseline, with eight weeks of each."""
    from interlock._internal.evals.fleet import write_fleet_report
    from interlock._internal.evals.weekly import default_week_ending
    from interlock._internal.systems.service import registered_manifests

    try:
        day = date.fromisoformat(week_ending) if week_ending else default_week_ending()
    except ValueError:
        fail(f"--week-ending {week_ending!r}: expected YYYY-MM-DD", code=2, as_json=as_json)
    try:
        with (
            opened_database(db, as_json=as_json) as engine,
            err_console.status("computing the fleet report…"),
        ):
            manifests, problems = registered_manifests(engine)
            html_path, json_path, report = write_fleet_report(engine, manifests, week_ending=day, out_dir=out)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json(
            {**report, "problems": problems, "files": {"html": str(html_path), "json": str(json_path)}}
        )
        return
    for problem in problems:
        err_console.print(f"skipped: {problem}", highlight=False)
    autonomy = report["fleet"]["figures"]["autonomy_rate"]["value"]
    console.print(f"wrote {html_path} and {json_path}", highlight=False)
    shown = "n/a" if autonomy is None else f"{autonomy * 100:.1f}%"
    console.print(f"{report['fleet']['workflows']} workflows; autonomy rate {shown}", highlight=False)
