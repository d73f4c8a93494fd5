"""Alembic migrations, run programmatically: ``interlock serve`` and every command that opens the
database upgrade it first; ``interlock db`` shows and checks where a database stands.

A database migrated by a newer Interlock carries a revision this one does not know. Nothing
here touches such a database: :func:`upgrade` refuses it (``schema_too_new``), because an older
release can neither read the newer tables correctly nor downgrade them (its code does not have
the newer revisions' ``downgrade``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from interlock.exceptions import StorageError

_HERE = Path(__file__).parent

SchemaState = Literal["empty", "behind", "current", "newer"]


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / "migrations"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this Interlock knows (what ``upgrade`` migrates to)."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise StorageError("no migrations are installed")
    return head


def revisions() -> list[str]:
    """Every revision this Interlock knows, oldest first."""
    return [rev.revision for rev in reversed(list(_script().walk_revisions()))]


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this Interlock's migrations."""

    current: str | None
    head: str
    state: SchemaState
    pending: list[str] = field(default_factory=list)  # revisions ``upgrade`` would apply, in order

    @property
    def message(self) -> str:
        if self.state == "current":
            return f"database schema is at {self.current}, the newest this Interlock knows"
        if self.state == "newer":
            return newer_message(self.current, self.head)
        where = "empty" if self.current is None else f"at {self.current}"
        return (
            f"database schema is {where}; {len(self.pending)} migration(s) to apply up to {self.head}: "
            + ", ".join(self.pending)
        )

    def as_dict(self) -> dict[str, Any]:
        return {"current": self.current, "head": self.head, "state": self.state, "pending": self.pending}


def newer_message(current: str | None, head: str) -> str:
    from interlock import __version__

    return (
        f"the database schema is at revision {current}, which this Interlock ({__version__}, newest "
        f"schema {head}) does not know: a newer Interlock migrated it. Run that newer version, or "
        "restore the backup taken before the upgrade; an older release never downgrades a database"
    )


def current_revision(engine: Engine) -> str | None:
    """The database's revision (None for a database never migrated)."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read the schema revision: {exc}") from exc


def status(engine: Engine) -> SchemaStatus:
    """Compare the database's revision with this Interlock's migrations."""
    current = current_revision(engine)
    head = head_revision()
    known = revisions()
    if current is None:
        return SchemaStatus(current, head, "empty", known)
    if current not in known:
        return SchemaStatus(current, head, "newer")
    pending = known[known.index(current) + 1 :]
    return SchemaStatus(current, head, "behind" if pending else "current", pending)


def drift(engine: Engine) -> list[str]:
    """Differences between the migrated tables and the model in ``tables.py`` (empty: none)."""
    from interlock._internal.store.tables import metadata

    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot compare the schema: {exc}") from exc
    return [_describe(diff) for diff in diffs]


def _describe(diff: Any) -> str:
    # compare_metadata yields tuples, or lists of tuples for column modifications.
    if isinstance(diff, list):
        return "; ".join(_describe(d) for d in diff)
    kind, *rest = diff
    names = [getattr(x, "name", None) or str(x) for x in rest if x is not None]
    return f"{kind}: {', '.join(str(n) for n in names)}"


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision``; safe to call from several replicas at once.

    Raises :class:`StorageError` with code ``schema_too_new`` when a newer Interlock migrated the
    database, without touching it.
    """
    current = current_revision(engine)
    if current is not None and current not in revisions():
        raise StorageError(newer_message(current, head_revision()), code="schema_too_new")
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise StorageError(f"migration failed: {exc}") from exc
    except CommandError as exc:
        raise StorageError(f"migration failed: {exc}") from exc


__all__ = [
    "SchemaStatus",
    "alembic_config",
    "current_revision",
    "drift",
    "head_revision",
    "newer_message",
    "revisions",
    "status",
    "upgrade",
]
