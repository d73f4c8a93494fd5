"""``interlock notifications list``: what Interlock told people, and how each delivery ended.

Reads the database directly, like ``interlock handoffs``; with ``--as ID`` only the workflows
that operator holds a role on are shown.
"""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from interlock._internal.cli.approvals import AsOpt, DbOpt, JsonOpt, _opened, _operator
from interlock._internal.cli.common import console, print_json, print_records
from interlock._internal.operations.notifications import visible_deliveries

app = typer.Typer(help="Notices sent to webhooks, chat and ticket systems.", no_args_is_help=True)


@app.command("list")
def list_notifications(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="pending, delivered or failed.")] = None,
    event: Annotated[
        str | None, typer.Option("--event", help="Only this event kind, e.g. approval.requested.")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Only to this target.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most this many.")] = 50,
    as_operator: AsOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List deliveries, newest first: event, target, status, attempts, last answer, ticket key."""
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, as_operator, as_json=as_json) if as_operator else None
        items = visible_deliveries(
            il, operator, run_id=run, status=status, event_kind=event, target=target, limit=limit
        )
    if as_json:
        print_json([d.model_dump(mode="json") for d in items])
        return
    if not items:
        console.print("no notifications", style="dim")
        return
    rows = [
        {
            "id": escape(d.id),
            "event": escape(d.event),
            "target": escape(f"{d.target} ({d.kind})"),
            "status": escape(d.status),
            "attempts": str(d.attempts),
            "answer": escape(
                d.last_error or (str(d.last_status_code) if d.last_status_code is not None else "-")
            ),
            "ticket": escape(d.reference or "-"),
            "run": escape(d.run_id or "-"),
            "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created_at)),
        }
        for d in items
    ]
    columns = ["id", "event", "target", "status", "attempts", "answer", "ticket", "run", "when"]
    print_records(rows, columns=columns, key="id", headline=["event", "status"])
