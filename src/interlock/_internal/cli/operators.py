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
    """Create an operator and print their API token. The token is shown this once and never stored."""
    with opened(db, as_json=as_json) as il:
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
