"""``interlock graph``: workflows, agents, tools, systems, environments and data classes as JSON or DOT."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from interlock._internal.cli.common import console, fail, fail_from, opened_database
from interlock.exceptions import InterlockError


def graph(
    manifests: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Manifest files (default: every workflow registered in the database).", show_default=False
        ),
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or dot (Graphviz).")] = "json",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
) -> None:
    """Print the system graph: who acts on which system, in which environment, with which data."""
    from interlock._internal.manifest.loader import load_manifest
    from interlock._internal.systems.graph import build_graph, to_dot

    if as_json:
        fmt = "json"
    if fmt not in ("json", "dot"):
        fail(f"--format {fmt!r}: expected json or dot", code=2, as_json=as_json)
    problems: list[str] = []
    try:
        if manifests:
            loaded = [load_manifest(path).manifest for path in manifests]
        else:
            from interlock._internal.systems.service import registered_manifests

            with opened_database(db, as_json=fmt == "json") as engine:
                loaded, problems = registered_manifests(engine)
    except InterlockError as exc:
        fail_from(exc, as_json=fmt == "json")
    result = build_graph(loaded)
    if fmt == "dot":
        console.out(to_dot(result), end="", highlight=False)
    else:
        console.out(json.dumps({**result, "problems": problems}, indent=2, sort_keys=True), highlight=False)
