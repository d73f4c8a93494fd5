"""``interlock agents``: create, list and revoke the non-human identities agents act as."""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from interlock._internal.cli.common import console, err_console, fail, fail_from, opened_interlock, print_json
from interlock._internal.operations.agents import manifest_mismatch
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.identity.agents import AgentRecord

app = typer.Typer(
    help="Agents: create one (its secret is shown once), list them, revoke one.", no_args_is_help=True
)

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def cli_actor() -> str:
    """Who the audit log says made a change from the command line."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in some containers
        return "cli"


opened = opened_interlock


def agent_dict(record: AgentRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "workflow": record.workflow,
        "environment": record.environment,
        "status": record.status,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "revoked_by": record.revoked_by,
        "last_seen_at": record.last_seen_at,
    }


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


@app.command()
def create(
    agent_id: Annotated[str, typer.Argument(metavar="ID", help="The agent's client id.")],
    workflow: Annotated[str, typer.Option("--workflow", "-w", help="The workflow it acts in.")],
    env: Annotated[str, typer.Option("--env", "-e", help="The environment it acts in.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Create it even if the workflow's manifest does not declare it so (warns)."
        ),
    ] = False,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            "-m",
            help="Check against this manifest file (and create the database if there is none yet) "
            "instead of the workflow's version a server loaded.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an agent and print its client secret. The secret is shown this once and never stored.

    The workflow's manifest (--manifest, or the version a server last loaded on this database) must
    declare the agent in that environment; --force creates it anyway, with a warning."""
    loaded = None
    if manifest is not None:
        from interlock._internal.manifest.loader import load_manifest

        try:
            loaded = load_manifest(manifest)
        except InterlockError as exc:
            fail_from(exc, as_json=as_json)
    with opened(db, as_json=as_json, create=loaded is not None) as il:
        problem = manifest_mismatch(il, agent_id, workflow=workflow, environment=env, manifest=loaded)
        if problem is not None and not force:
            fail(problem + "; --force creates it anyway", as_json=as_json, error_code="not_in_manifest")
        if problem is not None:
            err_console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        creds = il.agents.create(agent_id, workflow=workflow, environment=env, actor=cli_actor())
        record = il.agents.get(creds.client_id)
    if as_json:
        print_json({**agent_dict(record), "client_id": creds.client_id, "client_secret": creds.client_secret})
        return
    where = f"{escape(record.workflow)} / {escape(record.environment)}"
    console.print(f"Created agent [bold]{escape(record.id)}[/] for {where}.")
    # Plain writes: the secret must come out whole, never wrapped or styled.
    sys.stdout.write(f"client_id:     {creds.client_id}\nclient_secret: {creds.client_secret}\n")
    console.print("The secret is shown only now: store it where the agent reads its secrets.", style="yellow")


@app.command("list")
def list_agents(
    workflow: Annotated[
        str | None, typer.Option("--workflow", "-w", help="Only this workflow's agents.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List agents, revoked ones included."""
    with opened(db, as_json=as_json) as il:
        records = il.agents.list(workflow)
    if as_json:
        print_json([agent_dict(r) for r in records])
        return
    if not records:
        console.print("no agents", style="dim")
        return
    table = Table("id", "workflow", "environment", "status", "created", "last seen")
    for r in records:
        status = "[green]active[/]" if r.active else f"[red]{escape(r.status)}[/]"
        table.add_row(
            escape(r.id),
            escape(r.workflow),
            escape(r.environment),
            status,
            when(r.created_at),
            when(r.last_seen_at),
        )
    console.print(table)


@app.command()
def revoke(
    agent_id: Annotated[str, typer.Argument(metavar="ID", help="The agent to revoke.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded in the audit log.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an agent: no new tokens, and tokens already issued fail on their next use."""
    with opened(db, as_json=as_json) as il:
        record = il.agents.revoke(agent_id, actor=cli_actor(), reason=reason)
    if as_json:
        print_json(agent_dict(record))
        return
    console.print(f"Revoked agent [bold]{escape(record.id)}[/] ({escape(record.workflow)}).")
