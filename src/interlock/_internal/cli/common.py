"""Helpers every CLI module shares: settings from flags, JSON output, errors as exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

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
            engine = stack.enter_context(opened(settings.database, create=True, storage=settings.storage))
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


# Under this width a table of several columns wraps every cell into unreadable slivers: each
# record is printed as a short block instead (first line the id and what matters most).
WIDE_ENOUGH = 110


def print_records(
    rows: list[dict[str, str]],
    *,
    columns: list[str],
    key: str,
    headline: list[str],
    whole: tuple[str, ...] = (),
    wide: int = WIDE_ENOUGH,
) -> None:
    """Print ``rows`` (already escaped for Rich markup) as a table on a wide terminal, or as one
    block per row on a narrow one (80 columns), where ``key`` (an id to copy) is never wrapped,
    nor are the ``whole`` columns (other ids) in the table."""
    if console.width >= wide:
        table = Table(*[Column(c, no_wrap=c == key or c in whole) for c in columns])
        for row in rows:
            table.add_row(*(row.get(c, "-") for c in columns))
        console.print(table)
        return
    for row in rows:
        head = "  ".join([f"[bold]{row[key]}[/]", *(row.get(c, "-") for c in headline)])
        console.print(head, highlight=False, soft_wrap=True)
        rest = [f"{c} {row[c]}" for c in columns if c != key and c not in headline and row.get(c, "-") != "-"]
        if rest:
            console.print("  " + " · ".join(rest), highlight=False, overflow="fold")


def summarize_arguments(arguments: Any, *, limit: int = 60) -> str:
    """The arguments a person scans a list for, in one short line: an amount with its currency
    first, then the other plain values."""
    if not isinstance(arguments, dict):
        return "-" if arguments is None else str(arguments)[:limit]
    parts = []
    if "amount" in arguments:
        currency = arguments.get("currency")
        parts.append(f"amount {arguments['amount']}" + (f" {currency}" if isinstance(currency, str) else ""))
    for name, value in arguments.items():
        if name in ("amount", "currency") or isinstance(value, dict | list):
            continue
        parts.append(f"{name} {value}")
    text = ", ".join(parts) or "-"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
