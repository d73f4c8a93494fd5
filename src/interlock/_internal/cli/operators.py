"""``interlock operators``: the people who run Interlock and their API tokens."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from interlock._internal.cli.agents import DbOpt, JsonOpt, cli_actor, opened, when
from interlock._internal.cli.common import console, print_json

if TYPE_CHECKING:
    from interlock._internal.identity.operators import OperatorRecord

app = typer.Typer(
    help="Operators (admin, owner, approver, auditor): create one (token shown once), list, disable.",
    no_args_is_help=True,
)


def operator_dict(record: OperatorRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "roles": list(record.roles),
        "workflows": None if record.workflows is None else list(record.workflows),
        "status": record.status,
        "created_at": record.created_at,
    }


@app.command()
def create(
    operator_id: Annotated[str, typer.Argument(metavar="ID", help="The operator's id.")],
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="admin, owner, approver or auditor; repeat for several.")
    ],
    workflow: Annotated[
        list[str] | None,
        typer.Option(
            "--workflow", "-w", help="Limit the roles to this workflow; repeat. Default: every workflow."
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an operator and print their API token. The token is shown this once and never stored.

    The first operator may be created before anything else: this creates the database if needed."""
    with opened(db, as_json=as_json, create=True) as il:
        record, token = il.operators.create(
            operator_id, roles=role, workflows=workflow or None, actor=cli_actor()
        )
    if as_json:
        print_json({**operator_dict(record), "token": token})
        return
    scope = ", ".join(record.workflows) if record.workflows is not None else "every workflow"
    console.print(
        f"Created operator [bold]{escape(record.id)}[/] with roles {escape(', '.join(record.roles))} "
        f"on {escape(scope)}."
    )
    sys.stdout.write(f"token: {token}\n")
    console.print("The token is shown only now; send it as 'Authorization: Bearer <token>'.", style="yellow")


@app.command("list")
def list_operators(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List operators, disabled ones included."""
    with opened(db, as_json=as_json) as il:
        records = il.operators.list()
    if as_json:
        print_json([operator_dict(r) for r in records])
        return
    if not records:
        console.print("no operators", style="dim")
        return
    table = Table("id", "roles", "workflows", "status", "created")
    for r in records:
        status = "[green]active[/]" if r.active else f"[red]{escape(r.status)}[/]"
        scope = ", ".join(r.workflows) if r.workflows is not None else "(all)"
        table.add_row(escape(r.id), escape(", ".join(r.roles)), escape(scope), status, when(r.created_at))
    console.print(table)


@app.command("signin-link")
def signin_link(
    operator_id: Annotated[str, typer.Argument(metavar="ID", help="The operator to sign in.")],
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The console's address, ending in /ui (default: server.public_url, else host and port).",
        ),
    ] = None,
    ttl: Annotated[int, typer.Option("--ttl", min=60, max=86_400, help="Seconds the link stays good.")] = 600,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a one-time console sign-in link for an operator. It is kept in the database, so any
    running replica accepts it: no restart needed. Good for one use, within --ttl seconds."""
    from interlock._internal.operations.signin import console_url, sign_in_link

    with opened(db, as_json=as_json) as il:
        link = sign_in_link(il, operator_id, console=url or console_url(il), actor=cli_actor(), ttl_s=ttl)
    if as_json:
        print_json({"operator_id": operator_id, "url": link, "expires_in_s": ttl})
        return
    # Plain write: the link must come out whole, never wrapped.
    sys.stdout.write(f"{link}\n")
    console.print(f"One use, within {ttl} seconds; it signs in as {escape(operator_id)}.", style="yellow")


@app.command()
def disable(
    operator_id: Annotated[str, typer.Argument(metavar="ID", help="The operator to disable.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable an operator: their token stops working at once."""
    with opened(db, as_json=as_json) as il:
        record = il.operators.disable(operator_id, actor=cli_actor())
    if as_json:
        print_json(operator_dict(record))
        return
    console.print(f"Disabled operator [bold]{escape(record.id)}[/].")
