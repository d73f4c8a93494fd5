"""Helpers every CLI module shares: settings from flags, JSON output, errors as exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape

from interlock._internal.settings import Settings
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.service import Interlock
    from interlock._internal.store.database import Engine

console = Console()
err_console = Console(stderr=True)


def load_settings(db: str | None = None) -> Settings:
    from interlock._internal.settings.errors import load

    try:
        settings: Settings = load(Settings)
    except InterlockError as exc:  # names the file and line (or variable), the key, a did-you-mean
        fail(f"settings: {exc}", code=2, error_code=exc.code)
    return settings.with_database(db) if db else settings


def check_database(settings: Settings, *, as_json: bool, create: bool = False) -> None:
    """Say which database the command uses (on stderr, so stdout stays parseable) and, unless the
    command may ``create`` it, refuse one that does not exist."""
    from interlock._internal.store.database import database_label, require_database

    label = escape(database_label(settings.database))
    err_console.print(f"database: {label}", style="dim", highlight=False, soft_wrap=True)
    if not create:
        try:
            require_database(settings.database)
        except InterlockError as exc:
            fail_from(exc, as_json=as_json)


@contextmanager
def opened_database(db: str | None, *, as_json: bool, create: bool = False) -> Iterator[Engine]:
    """An engine on the configured (or given) database, migrated; failing to open it ends the command."""
    from interlock._internal.store.database import opened_database as opened

    settings = load_settings(db)
    check_database(settings, as_json=as_json, create=create)
    with ExitStack() as stack:
        try:
            engine = stack.enter_context(opened(settings.database, create=True))
        except InterlockError as exc:  # opening it; the command handles its own errors
            fail_from(exc, as_json=as_json)
        yield engine


@contextmanager
def opened_interlock(db: str | None, *, as_json: bool, create: bool = False) -> Iterator[Interlock]:
    """An Interlock on the configured (or given) database, migrated; errors end the command."""
    from interlock._internal.service import Interlock

    settings = load_settings(db)
    check_database(settings, as_json=as_json, create=create)
    interlock = Interlock(settings)
    try:
        interlock.migrate()
        yield interlock
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        interlock.close()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def fail(message: str, *, code: int = 1, as_json: bool = False, error_code: str = "error") -> NoReturn:
    if as_json:
        print_json({"error": {"code": error_code, "message": message}})
    else:
        # The message quotes names and values from files and users: never read it as markup.
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


def fail_from(exc: InterlockError, *, as_json: bool = False) -> NoReturn:
    fail(str(exc), as_json=as_json, error_code=exc.code)
