"""Which database a command uses, and whether it exists yet.

A command that reads state must not create an empty database and then report on it ("no pending
approvals", "audit chain OK" on a file it just made): it names the database it uses and refuses
one that does not exist. Only what sets a deployment up (``interlock serve``, ``interlock demo``,
``interlock operators create``) may create it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from interlock._internal.settings import DatabaseSettings, StorageSettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade
from interlock.exceptions import NotFound, StorageError

# Every Interlock database has it from its first migration on.
_MARKER_TABLE = "alembic_version"


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (``None`` for in-memory or another dialect)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return None if path in ("", ":memory:") else Path(path).expanduser().resolve()


def database_label(db: DatabaseSettings) -> str:
    """The database as a person should read it: a SQLite file's full path, or the URL without its
    password."""
    path = _sqlite_path(db.url)
    if path is not None:
        return f"sqlite:///{path}"
    try:
        return make_url(db.url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database url>"


def database_exists(db: DatabaseSettings, *, engine: Engine | None = None) -> bool:
    """Whether an Interlock database is there: the SQLite file exists, or the PostgreSQL schema has
    been migrated at least once. In-memory SQLite always starts empty, so it counts as there."""
    path = _sqlite_path(db.url)
    if db.url.startswith("sqlite"):
        return path is None or (path.is_file() and path.stat().st_size > 0)
    own = engine is None
    engine = engine if engine is not None else make_engine(db)
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).has_table(_MARKER_TABLE))
    except SQLAlchemyError as exc:
        raise StorageError(
            f"cannot reach the database {database_label(db)}: {exc.__class__.__name__}"
        ) from exc
    finally:
        if own:
            engine.dispose()


def require_database(db: DatabaseSettings) -> None:
    """:class:`NotFound` (``database_not_found``) unless the database exists."""
    if not database_exists(db):
        raise NotFound(
            f"no Interlock database at {database_label(db)}; nothing was created. Point to yours with "
            "--db URL, INTERLOCK_DATABASE__URL or [database] url in interlock.toml, or create one by "
            "running `interlock serve`",
            code="database_not_found",
        )


@contextmanager
def opened_database(
    db: DatabaseSettings, *, create: bool = False, storage: StorageSettings | None = None
) -> Iterator[Engine]:
    """An engine on the database, brought to the current schema; without ``create``, only if it
    already exists. ``storage``: the data keys payloads are encrypted with."""
    if not create:
        require_database(db)
    engine = make_engine(db, storage)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


__all__ = ["Engine", "database_exists", "database_label", "opened_database", "require_database"]
