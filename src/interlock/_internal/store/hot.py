"""The hot path's SQL: Core statements compiled once per dialect, run on the driver's connection.

A statement through SQLAlchemy's ``Connection`` costs some 20-30 µs of Python before the driver
sees it (cache key, parameter processing, result set-up, events), and a transaction two more for
``BEGIN`` and ``COMMIT``: with a dozen statements that was most of an action. The pipeline's
statements are built once (``gateway/statements.py`` and the modules it calls), so here each is
compiled once per dialect, into its SQL text, parameter names and constants, and the type
processors of its parameters and result columns; executing it then only binds values and calls the
driver. sqlite3 keeps compiled statements per connection, keyed by their text; psycopg prepares a
statement on the server after its fifth use on a connection. Both are "prepared once".

:func:`hot_write` is a write transaction like :func:`~.engine.transaction` (on SQLite it queues on
the same in-process lock and takes the write lock with ``BEGIN IMMEDIATE``); :func:`hot_read` runs
single-statement reads in autocommit (each statement its own snapshot; no ``BEGIN``, no ``COMMIT``,
one round trip on PostgreSQL). Errors are SQLAlchemy's (``IntegrityError`` and so on, with the
driver's error as ``orig``) inside the block and :class:`StorageError` outside it, as with the
ordinary helpers, so stage functions run unchanged on either kind of connection (:data:`Conn`).

A statement built anew on every call still works here, compiled each time (slow, and never
cached); the hot path's statements are module-level constants.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from operator import itemgetter
from typing import Any, Union, cast

from sqlalchemy import Table, event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from interlock._internal.store import engine as engine_settings
from interlock._internal.store.engine import short_error, write_lock
from interlock.exceptions import StorageError

_Processor = Callable[[Any], Any]
_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_(\w+)\]")


class _Compiled:
    """One statement compiled for one dialect."""

    __slots__ = (
        "binds",
        "columns",
        "constants",
        "converts",
        "expanding",
        "keys",
        "pick",
        "plan",
        "positional",
        "processors",
        "resolved",
        "results",
        "sql",
    )

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, column_keys: list[str] | None = None
    ) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=column_keys))
        self.sql: str = compiled.string
        self.positional = bool(dialect.positional)
        # Names in placeholder order (positional) or as they appear (named).
        self.binds: tuple[str, ...] = tuple(
            compiled.positiontup if compiled.positiontup is not None else compiled.bind_names.values()
        )
        escaped = compiled.escaped_bind_names
        if escaped:  # pragma: no cover - the pipeline's bind names need no escaping
            raise ValueError(f"bind names need escaping: {dict(escaped)}")
        self.constants: dict[str, Any] = {}
        self.expanding: frozenset[str] = frozenset()
        expanding = set()
        for bind, name in compiled.bind_names.items():
            if bind.expanding:
                expanding.add(name)
            if not bind.required:
                self.constants[name] = bind.effective_value
        self.expanding = frozenset(expanding)
        processors = compiled._bind_processors
        # (A sequence of processors is for tuple-valued binds, which the pipeline does not use.)
        self.processors: dict[str, _Processor] = {
            k: cast(_Processor, v) for k, v in processors.items() if v is not None
        }
        # Each bind name with its processor, in bind order: what :meth:`bind` walks per execution.
        self.plan: tuple[tuple[str, _Processor | None], ...] = tuple(
            (name, self.processors.get(name)) for name in self.binds
        )
        # What :meth:`bind` does per execution: every value picked at once, in bind order (C
        # code, not a Python loop over a hundred parameters an action), then only the few that
        # have a type processor converted.
        self.pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = _picker(self.binds)
        self.converts: tuple[tuple[int, str, _Processor], ...] = tuple(
            (i, name, proc) for i, (name, proc) in enumerate(self.plan) if proc is not None
        )
        columns = getattr(statement, "exported_columns", None)
        self.columns = tuple(columns) if columns is not None else ()
        self.keys: tuple[str, ...] | None = tuple(columns.keys()) if columns is not None else None
        # The result columns that have a processor, by position (None: no column has one).
        self.results: tuple[tuple[int, _Processor], ...] | None = None
        self.resolved = False

    def resolve_results(self, description: Any, dialect: Dialect) -> None:
        """The result columns' processors, from the driver's type codes (asked on first use)."""
        if not self.columns:  # textual SQL: the driver's values as they come
            self.keys = tuple(d[0] for d in description)
            self.resolved = True
            return
        if len(description) != len(self.columns):  # pragma: no cover - statements are plain
            raise ValueError(f"{len(description)} result columns, expected {len(self.columns)}")
        procs = [
            c.type.dialect_impl(dialect).result_processor(dialect, d[1])
            for c, d in zip(self.columns, description, strict=True)
        ]
        converted = tuple((i, p) for i, p in enumerate(procs) if p is not None)
        self.results = converted or None
        self.resolved = True

    def bind(self, params: Mapping[str, Any] | None) -> tuple[str, Any]:
        constants = self.constants
        values = ({**constants, **params} if constants else params) if params else constants
        if self.expanding:
            return self._expand(values)
        picked = self.pick(values)
        if self.positional:
            if not self.converts:
                return self.sql, picked
            out = list(picked)
            for i, _, proc in self.converts:
                value = out[i]
                if value is not None:
                    out[i] = proc(value)
            return self.sql, tuple(out)
        named = dict(zip(self.binds, picked, strict=True))
        for _, name, proc in self.converts:
            value = named[name]
            if value is not None:
                named[name] = proc(value)
        return self.sql, named

    def _expand(self, values: Mapping[str, Any]) -> tuple[str, Any]:
        """Render ``IN`` lists bound at execution (``bindparam(..., expanding=True)``)."""
        procs = self.processors
        if self.positional:
            out: list[Any] = []
            for name in self.binds:
                value = values[name]
                proc = procs.get(name)
                if name in self.expanding:
                    out.extend(proc(v) if proc is not None and v is not None else v for v in value)
                else:
                    out.append(proc(value) if proc is not None and value is not None else value)

            def placeholders(m: re.Match[str]) -> str:
                n = len(values[m.group(1)])
                return ", ".join("?" * n) if n else "NULL"

            return _POSTCOMPILE.sub(placeholders, self.sql), tuple(out)
        named: dict[str, Any] = {}
        for name in self.binds:
            value = values[name]
            proc = procs.get(name)
            if name in self.expanding:
                for i, v in enumerate(value):
                    named[f"{name}__{i}"] = proc(v) if proc is not None and v is not None else v
            else:
                named[name] = proc(value) if proc is not None and value is not None else value

        def named_placeholders(m: re.Match[str]) -> str:
            name = m.group(1)
            n = len(values[name])
            return ", ".join(f"%({name}__{i})s" for i in range(n)) if n else "NULL"

        return _POSTCOMPILE.sub(named_placeholders, self.sql), named


def _picker(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function giving the values of ``names`` in a mapping, in order, as a tuple (a missing
    one raises KeyError)."""
    if len(names) > 1:
        return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], itemgetter(*names))
    if names:
        name = names[0]
        return lambda values: (values[name],)
    return lambda values: ()


def _convert(row: tuple[Any, ...], results: tuple[tuple[int, _Processor], ...]) -> tuple[Any, ...]:
    """A row with its processed columns converted."""
    out = list(row)
    for i, proc in results:
        out[i] = proc(out[i])
    return tuple(out)


_CACHE_ATTR = "_interlock_hot_statements"
_CACHE_GUARD = threading.Lock()


class _ByStatement:
    """Compiled forms by statement object, held weakly (a statement built per call goes with it).

    What ``WeakKeyDictionary`` does, with the lookup inlined: ``compiled_for`` runs for every
    statement of every action."""

    __slots__ = ("__weakref__", "data")

    def __init__(self) -> None:
        self.data: dict[weakref.ref[Any], Any] = {}

    def put(self, statement: ClauseElement, value: Any) -> None:
        me = weakref.ref(self)

        def forget(key: weakref.ref[Any]) -> None:
            cache = me()
            if cache is not None:
                cache.data.pop(key, None)

        self.data[weakref.ref(statement, forget)] = value


def compiled_for(
    statement: ClauseElement, dialect: Dialect, params: Mapping[str, Any] | None = None
) -> _Compiled:
    """The statement compiled for the dialect, once per statement object and engine (an INSERT
    without explicit values once per set of columns given, as SQLAlchemy compiles it)."""
    # Per engine (kept on its dialect object, so it goes with the engine), not per dialect name:
    # the type processors compiled in hold that engine's state (its data keys for encrypted
    # payload columns).
    cache: _ByStatement | None = dialect.__dict__.get(_CACHE_ATTR)
    if cache is None:
        with _CACHE_GUARD:
            cache = dialect.__dict__.setdefault(_CACHE_ATTR, _ByStatement())
    # (A weak reference to a live object equals, and hashes as, every other one to it.)
    found = cache.data.get(weakref.ref(statement))
    if type(found) is _Compiled:
        return found
    if getattr(statement, "is_insert", False):
        keys = frozenset(params or ())
        by_keys = found if found is not None else {}
        compiled = by_keys.get(keys)
        if compiled is None:
            compiled = _Compiled(statement, dialect, sorted(keys))
            with _CACHE_GUARD:
                by_keys[keys] = compiled
                cache.put(statement, by_keys)
        return cast(_Compiled, compiled)
    found = _Compiled(statement, dialect)
    with _CACHE_GUARD:
        cache.put(statement, found)
    return found


class HotResult:
    """What a statement gave back: every row, fetched at once, and the row count.

    In a pipelined transaction (PostgreSQL) the statement has only been sent: its answer is
    waited for the first time it is asked for (rows, row count), together with the answers of
    every statement sent before it (one round trip for all of them)."""

    __slots__ = ("_keys", "_pending", "_rowcount", "_rows")

    def __init__(
        self,
        rows: list[tuple[Any, ...]],
        keys: tuple[str, ...] | None,
        rowcount: int,
        pending: Callable[[], tuple[list[tuple[Any, ...]], tuple[str, ...] | None, int]] | None = None,
    ) -> None:
        self._rows = rows
        self._keys = keys or ()
        self._rowcount = rowcount
        self._pending = pending

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            rows, keys, self._rowcount = pending()
            self._rows, self._keys = rows, keys or ()

    @property
    def rowcount(self) -> int:
        self._wait()
        return self._rowcount

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._wait()
        return iter(self._rows)

    def first(self) -> tuple[Any, ...] | None:
        self._wait()
        return self._rows[0] if self._rows else None

    def one(self) -> tuple[Any, ...]:
        self._wait()
        if len(self._rows) != 1:
            raise _NoResult(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalar(self) -> Any:
        self._wait()
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def all(self) -> list[tuple[Any, ...]]:
        self._wait()
        return list(self._rows)

    def mappings(self) -> _Mappings:
        self._wait()
        return _Mappings([dict(zip(self._keys, row, strict=True)) for row in self._rows])


class _Mappings:
    __slots__ = ("_rows",)

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise _NoResult(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def all(self) -> list[Any]:
        return list(self._rows)


class _NoResult(SQLAlchemyError):
    """``one()`` found no row or several (SQLAlchemy's own ``NoResultFound`` is its subclass too)."""


class HotTx:
    """A transaction (or, for reads, an autocommit session) on one pooled driver connection.

    Duck-types the part of SQLAlchemy's ``Connection`` the pipeline's stage functions use:
    ``execute(statement, params)`` returning rows with ``first``, ``one``, ``scalar_one``,
    ``mappings``, ``rowcount`` and iteration, and ``dialect``.

    With a ``pipeline`` (psycopg's pipeline mode, in a PostgreSQL write transaction), a statement
    is sent without waiting for its answer; see :class:`HotResult`. A statement's error may then
    surface at a later statement, when an answer is waited for, or at the commit: the transaction
    fails as a whole either way, as it would have."""

    __slots__ = ("_cursor", "_driver", "_fairy", "_pipeline", "dialect")

    def __init__(self, fairy: Any, dialect: Dialect, pipeline: Any = None) -> None:
        self._fairy = fairy
        self._driver = fairy.driver_connection
        self._cursor = self._driver.cursor()
        self._pipeline = pipeline
        self.dialect = dialect

    def execute(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> HotResult:
        compiled = compiled_for(statement, self.dialect, parameters)
        sql, params = compiled.bind(parameters)
        if self._pipeline is not None:
            cursor = self._driver.cursor()  # a cursor per statement: each keeps its own answer
            try:
                cursor.execute(sql, params)
            except self.dialect.loaded_dbapi.Error as exc:
                raise self._failed(exc, sql, params, cursor) from exc
            return HotResult([], None, -1, lambda: self._answer(compiled, cursor, sql, params, wait=True))
        cursor = self._cursor
        try:
            cursor.execute(sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._failed(exc, sql, params, cursor) from exc
        rows, keys, rowcount = self._answer(compiled, cursor, sql, params, wait=False)
        return HotResult(rows, keys, rowcount)

    def _answer(
        self, compiled: _Compiled, cursor: Any, sql: str, params: Any, *, wait: bool
    ) -> tuple[list[tuple[Any, ...]], tuple[str, ...] | None, int]:
        try:
            if wait and cursor.pgresult is None:  # not answered yet: ask for every statement
                self._pipeline.sync()  # sent so far, answered in one round trip
            description = cursor.description
            rows: list[tuple[Any, ...]] = cursor.fetchall() if description is not None else []
        except self.dialect.loaded_dbapi.Error as exc:
            raise self._failed(exc, sql, params, cursor) from exc
        if description is not None and not compiled.resolved:
            compiled.resolve_results(description, self.dialect)
        results = compiled.results
        if results is not None and rows:
            rows = [_convert(row, results) for row in rows]
        return rows, compiled.keys, cursor.rowcount

    def _failed(self, exc: Any, sql: str, params: Any, cursor: Any) -> StatementError:
        invalidated = self.dialect.is_disconnect(exc, self._driver, cursor)
        if invalidated:
            self._fairy.invalidate(exc)
        error: StatementError = DBAPIError.instance(
            sql,
            params,
            exc,
            self.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=self.dialect,
        )
        return error


class InsertIgnore:
    """``INSERT … ON CONFLICT DO NOTHING`` into a table, built once per dialect; :meth:`run` says
    whether a row was written (RETURNING, not rowcount: psycopg reports -1 for it)."""

    __slots__ = ("_by_dialect",)

    def __init__(self, table: Table) -> None:
        from sqlalchemy import bindparam
        from sqlalchemy.dialects import postgresql, sqlite

        values = {c.name: bindparam(c.name, type_=c.type) for c in table.columns}
        key = tuple(table.primary_key.columns)
        self._by_dialect: dict[str, Any] = {
            name: dialect.insert(table).values(values).on_conflict_do_nothing().returning(*key)
            for name, dialect in (("sqlite", sqlite), ("postgresql", postgresql))
        }

    def run(self, conn: Conn, values: Mapping[str, Any]) -> bool:
        """Insert the row unless its key exists; every column must be given."""
        return conn.execute(self._by_dialect[conn.dialect.name], values).first() is not None


# The stage functions take either kind of connection.
Conn = Union[Connection, HotTx]  # noqa: UP007 - a runtime alias, read by mypy


class _Kept:
    """Driver connections the hot path keeps checked out between its transactions.

    A checkout from SQLAlchemy's pool and its return cost some 30 µs of Python (the connection
    record, reset on return, events), and an action takes three. The hot path hands its
    connections back here instead, and takes them from here first: a handful per engine, most
    recently used first, at most :data:`KEEP` idle and never more than half the pool's size (so
    the pool always has connections for everything else). A connection that sat here
    :data:`~.engine.IDLE_PING_S` or more is closed and a checkout from the pool replaces it (where
    the pool checks an idle connection before it hands it out), so nothing that may have gone
    stale is used unchecked; an invalidated one is never kept. When the engine is disposed, what
    is kept is closed with it.
    """

    __slots__ = ("idle", "limit")

    def __init__(self, pool_size: int) -> None:
        self.idle: deque[tuple[float, Any]] = deque()
        self.limit = min(KEEP, pool_size // 2)

    def drain(self) -> None:
        kept, self.idle = self.idle, deque()  # lease and give_back now use the new, empty one
        for _, fairy in kept:
            fairy.invalidate()  # closes the driver connection now, not when the old pool is collected


KEEP = 4
_KEPT_ATTR = "_interlock_hot_kept"


def _kept(engine: Engine) -> _Kept | None:
    kept: _Kept | None = engine.__dict__.get(_KEPT_ATTR)
    if kept is None:
        if not isinstance(engine.pool, QueuePool):  # one shared connection (SQLite in memory): as is
            return None
        with _CACHE_GUARD:
            kept = engine.__dict__.get(_KEPT_ATTR)
            if kept is None:
                kept = _Kept(engine.pool.size())
                event.listen(engine, "engine_disposed", _drain_on_dispose)
                engine.__dict__[_KEPT_ATTR] = kept
    return kept


def _drain_on_dispose(engine: Engine) -> None:
    kept: _Kept | None = engine.__dict__.get(_KEPT_ATTR)
    if kept is not None:
        kept.drain()


def _lease(engine: Engine) -> Any:
    """A driver connection for one hot transaction: a kept one if it is fresh, else the pool's."""
    kept = _kept(engine)
    if kept is not None:
        now = time.monotonic()
        while True:
            try:
                since, fairy = kept.idle.pop()
            except IndexError:
                break
            if now - since < engine_settings.IDLE_PING_S and fairy.is_valid:
                return fairy
            # It may have died while it sat here (a restart, a proxy's idle timeout): close it
            # rather than hand it out unchecked; the pool opens or checks another.
            fairy.invalidate()
    try:
        return engine.raw_connection()
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc.__class__.__name__}: {short_error(exc)}") from exc


def _give_back(engine: Engine, fairy: Any) -> None:
    kept = _kept(engine)
    if kept is not None and fairy.is_valid and len(kept.idle) < kept.limit:
        kept.idle.append((time.monotonic(), fairy))
        return
    fairy.close()


@contextmanager
def hot_write(engine: Engine) -> Iterator[HotTx]:
    """A write transaction on the driver's connection; commits when the block ends normally.

    On PostgreSQL across a network (``database.pipeline_writes``) the transaction runs in
    psycopg's pipeline mode, with its ``BEGIN`` and ``COMMIT`` sent as statements: a write whose
    answer nobody asks for goes out with the next statement that is asked for, and the last ones
    with the commit. The record of an executed action takes three round trips instead of eight."""
    dialect = engine.dialect
    sqlite = dialect.name == "sqlite"
    lock = write_lock(engine)
    if lock is not None:
        lock.acquire()
    try:
        fairy = _lease(engine)
        try:
            driver: Any = fairy.driver_connection
            pipelined: Any = None  # the context manager of psycopg's pipeline mode, while in it
            try:
                if sqlite:
                    driver.execute("BEGIN IMMEDIATE")
                    tx = HotTx(fairy, dialect)
                elif engine.__dict__.get(engine_settings.PIPELINE_WRITES):
                    # psycopg waits for its own BEGIN and COMMIT in pipeline mode; ours are queued.
                    driver.autocommit = True
                    pipelined = driver.pipeline()
                    tx = HotTx(fairy, dialect, pipelined.__enter__())
                    tx._cursor.execute("BEGIN")
                else:
                    tx = HotTx(fairy, dialect)
            except dialect.loaded_dbapi.Error as exc:
                if pipelined is not None:
                    _leave(pipelined, exc)
                _rollback(fairy, driver, sqlite=sqlite)
                raise StorageError(f"database error: {exc.__class__.__name__}: {exc}") from exc
            try:
                yield tx
                if sqlite:
                    driver.execute("COMMIT")
                else:
                    try:
                        if pipelined is not None:
                            tx._cursor.execute("COMMIT")
                            pipelined, leaving = None, pipelined
                            leaving.__exit__(None, None, None)  # what is queued, then the COMMIT
                            driver.autocommit = False
                        else:
                            driver.commit()
                    except dialect.loaded_dbapi.Error as exc:  # as SQLAlchemy would raise it
                        raise tx._failed(exc, "COMMIT", None, None) from exc
            except BaseException as exc:
                if pipelined is not None:
                    _leave(pipelined, exc)
                _rollback(fairy, driver, sqlite=sqlite)
                if isinstance(exc, SQLAlchemyError):
                    raise StorageError(
                        f"database error: {exc.__class__.__name__}: {short_error(exc)}"
                    ) from exc
                if isinstance(exc, dialect.loaded_dbapi.Error):
                    raise StorageError(f"database error: {exc.__class__.__name__}: {exc}") from exc
                raise
        finally:
            _give_back(engine, fairy)
    finally:
        if lock is not None:
            lock.release()


def _leave(pipelined: Any, exc: BaseException) -> None:
    """Leave pipeline mode after a failure, so the rollback can be sent; its own errors are the
    failure's echo (an aborted pipeline) and change nothing."""
    with suppress(Exception):
        pipelined.__exit__(type(exc), exc, exc.__traceback__)


def _rollback(fairy: Any, driver: Any, *, sqlite: bool) -> None:
    try:
        if sqlite:
            if driver.in_transaction:
                driver.execute("ROLLBACK")
        else:
            if driver.autocommit:  # a pipelined transaction: its BEGIN was ours, so is the ROLLBACK
                if driver.info.transaction_status != 0:  # in the block, failed or not (not idle)
                    driver.execute("ROLLBACK")
                driver.autocommit = False
            else:
                driver.rollback()
    except Exception as exc:  # the connection is unusable; the pool must not hand it out again
        fairy.invalidate(exc)


@contextmanager
def hot_read(engine: Engine) -> Iterator[HotTx]:
    """Reads in autocommit: each statement is its own snapshot, and nothing else is sent."""
    dialect = engine.dialect
    sqlite = dialect.name == "sqlite"
    fairy = _lease(engine)
    driver: Any = fairy.driver_connection
    try:
        if not sqlite:
            driver.autocommit = True
        yield HotTx(fairy, dialect)
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc.__class__.__name__}: {short_error(exc)}") from exc
    finally:
        try:
            if not sqlite and fairy.is_valid:
                driver.autocommit = False
        except Exception as exc:
            fairy.invalidate(exc)
        _give_back(engine, fairy)


__all__ = ["Conn", "HotResult", "HotTx", "InsertIgnore", "compiled_for", "hot_read", "hot_write"]
