"""Helpers every CLI module shares: settings from flags, JSON output, errors as exit codes."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from interlock._internal.settings import Settings
from interlock.exceptions import InterlockError

console = Console()
err_console = Console(stderr=True)


def load_settings(db: str | None = None) -> Settings:
    try:
        settings = Settings()
    except Exception as exc:  # pydantic ValidationError or TOML errors: show and stop
        fail(f"settings: {exc}")
    return settings.with_database(db) if db else settings


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
