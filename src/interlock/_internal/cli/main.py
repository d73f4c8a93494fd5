"""The ``interlock`` command. Each command group lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="interlock",
    help="Interlock: the control plane between AI agents and the systems they act on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here, not at module import, so `interlock --help` stays fast.
    from interlock._internal.cli import audit, check, workflow

    app.add_typer(workflow.app, name="workflow")
    app.add_typer(audit.app, name="audit")
    app.command("check")(check.check)


def main() -> None:
    _register()
    app()
