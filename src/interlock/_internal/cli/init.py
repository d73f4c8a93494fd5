"""``interlock init [DIR]``: scaffold a workflow of one's own, ready to validate, evaluate and serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from interlock._internal.cli.common import console, fail_from, print_json
from interlock.exceptions import InterlockError


def init(
    directory: Annotated[
        Path, typer.Argument(help="Folder for the new workflow (created if missing; default: here).")
    ] = Path("."),
    name: Annotated[
        str | None, typer.Option("--name", help="Workflow name (default: the folder's name).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite files that already exist.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Write a commented manifest (a read tool, a write that needs approval, a forbidden action),
    its tools module, a golden set and a README of next steps."""
    from interlock._internal.scaffold import scaffold, workflow_name

    try:
        written = scaffold(directory, name=name, force=force)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    wf = name or workflow_name(directory)
    if as_json:
        print_json({"workflow": wf, "directory": str(directory), "files": [str(p) for p in written]})
        return
    console.print(f"created workflow [bold]{wf}[/] in {directory}:", highlight=False)
    for path in written:
        console.print(f"  {path}", highlight=False)
    manifest = directory / "workflow.yaml"
    console.print("\nNext:", highlight=False)
    console.print(f"  interlock workflow validate {manifest}", highlight=False)
    console.print(f"  interlock eval {directory}", highlight=False)
    console.print(
        f"  interlock agents create AGENT_ID --workflow {wf} --env ENV --manifest {manifest}", highlight=False
    )
    console.print(f"  interlock serve --manifest {manifest}", highlight=False)
