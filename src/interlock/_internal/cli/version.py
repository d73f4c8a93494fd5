"""``interlock --version``: the installed version, and the newest database schema it knows."""

from __future__ import annotations

from typing import Annotated

import typer


def _show_version(value: bool) -> None:
    if not value:
        return
    from interlock import __version__
    from interlock._internal.store.migrate import head_revision

    typer.echo(f"interlock {__version__} (database schema {head_revision()})")
    raise typer.Exit()


def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version and the database schema revision it migrates to, then exit.",
        ),
    ] = False,
) -> None:
    """Interlock: the control plane between AI agents and the systems they act on."""
