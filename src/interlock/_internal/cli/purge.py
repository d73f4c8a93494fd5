"""``interlock purge``: replace old payloads with their hashes, as each workflow's retention asks."""

from __future__ import annotations

import getpass
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from interlock._internal.cli.common import (
    console,
    err_console,
    fail_from,
    opened_database,
    print_json,
)
from interlock.exceptions import InterlockError


def _actor() -> str:
    # Who the purge's audit event names; some containers have no user name.
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def purge(
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only this workflow (default: every workflow).")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Purge payloads older than this (e.g. 30d, 12h, 2w) "
            "instead of each manifest's retention_days.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be purged; change nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Replace step, decision and approval payloads past retention with {"purged": true, "sha256": …}.

    The audit log keeps its hashes, so `interlock audit verify` still passes; each purge is audited.
    """
    from interlock._internal.runs.retention import parse_age, purge_payloads

    try:
        age = parse_age(older_than) if older_than is not None else None
        with (
            opened_database(db, as_json=as_json) as engine,
            err_console.status("purging payloads…" if not dry_run else "counting payloads…"),
        ):
            report = purge_payloads(
                engine, workflow=workflow, older_than_s=age, dry_run=dry_run, actor=_actor()
            )
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json(report.as_dict())
        return
    verb = "would purge" if dry_run else "purged"
    table = Table(
        "workflow",
        "cutoff",
        "basis",
        "steps.arguments",
        "steps.result",
        "decisions",
        "approvals",
        "packages",
        "event",
    )
    for plan in report.purged:
        c = plan.counts
        table.add_row(
            escape(plan.workflow),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(plan.cutoff)),
            plan.basis,
            str(c.get("steps.arguments", 0)),
            str(c.get("steps.result", 0)),
            str(c.get("decisions.arguments", 0)),
            str(c.get("approvals.arguments", 0)),
            str(c.get("approvals.package.arguments", 0)),
            "-" if plan.event_seq is None else str(plan.event_seq),
        )
    if report.purged:
        console.print(table)
    for name, why in report.skipped.items():
        console.print(f"skipped {escape(name)}: {why}", highlight=False)
    console.print(f"{verb} {report.total} payload(s)", highlight=False)
