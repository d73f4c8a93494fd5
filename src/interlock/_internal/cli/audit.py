"""``interlock audit``: check the tamper-evident audit log."""

from __future__ import annotations

from typing import Annotated

import typer

from interlock._internal.cli.common import console, err_console, fail, fail_from, load_settings, print_json
from interlock.exceptions import AuditIntegrityError, InterlockError

app = typer.Typer(help="Verify the tamper-evident audit log.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Verify the tamper-evident audit log."""


@app.command()
def verify(
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recompute every hash of the audit chain; exit 1 naming the first event that does not verify."""
    # Imported here so `interlock --help` does not load SQLAlchemy and Alembic.
    from interlock._internal.audit.verify import VerifyReport, verify_chain
    from interlock._internal.store.engine import make_engine
    from interlock._internal.store.migrate import upgrade

    settings = load_settings(db)
    report: VerifyReport
    try:
        engine = make_engine(settings.database)
        try:
            # A database nobody has used yet is a valid, empty chain rather than a missing table.
            upgrade(engine)
            if as_json or not err_console.is_terminal:
                report = verify_chain(engine)
            else:
                with err_console.status("verifying the audit chain…") as status:
                    report = verify_chain(
                        engine, progress=lambda n: status.update(f"verifying the audit chain… {n} events")
                    )
        finally:
            engine.dispose()
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if not report.ok:
        fail(report.message, as_json=as_json, error_code=AuditIntegrityError.code)
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(report.message, highlight=False)
