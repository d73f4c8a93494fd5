"""Engines and transactions for SQLite (WAL) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # not on Windows: the writers of one process are still queued
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

from interlock._internal.settings import DatabaseSettings, StorageSettings
from interlock._internal.store.encryption import Keyring, install_keyring
from interlock.exceptions import ConfigError, StorageError

if TYPE_CHECKING:
    from interlock._internal.store.hot import Conn


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(db: DatabaseSettings, storage: StorageSettings | None = None) -> Engine:
    """Build an engine. SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` write transactions.

    With ``storage`` holding data keys, the engine's payload columns are encrypted at rest
    (``encryption.py``); without, encrypted values it meets fail to read, naming their key id.
    """
    keyring = None
    if storage is not None and (storage.encryption_keys or storage.encryption_key_id is not None):
        keyring = Keyring.from_settings(storage.encryption_keys, storage.encryption_key_id)
    url = db.url
    try:
        if url.startswith("sqlite"):
            engine = _sqlite_engine(url, db)
        else:
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            engine = create_engine(
                url,
                pool_size=db.pool_size,
                max_overflow=db.pool_size,
                echo=db.echo,
            )
            _ping_when_idle(engine)
            engine.__dict__[PIPELINE_WRITES] = _pipeline_writes(db.pipeline_writes, engine.url.host)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(f"database.url: cannot use {url!r}: {exc}") from exc
    if keyring is not None:
        install_keyring(engine, keyring)
    return engine


# Whether the engine's hot write transactions run in psycopg's pipeline mode (``hot.hot_write``).
PIPELINE_WRITES = "_interlock_pipeline_writes"
_LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1"}


def _pipeline_writes(setting: str, host: str | None) -> bool:
    """``database.pipeline_writes``: "on", "off", or "auto" (on unless the server is on this host:
    a round trip over loopback costs less than the client CPU pipelining adds)."""
    if setting == "off" or (setting == "auto" and (host in _LOCAL_HOSTS or str(host).startswith("/"))):
        return False
    try:
        import psycopg

        return bool(psycopg.Pipeline.is_supported())  # libpq 14 or later
    except ImportError:  # pragma: no cover - another driver: one statement at a time
        return False


# A connection back from the pool within this many seconds of its last use is handed out as it is.
IDLE_PING_S = 10.0


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it sat idle for :data:`IDLE_PING_S` or more.

    ``pool_pre_ping`` costs a round trip on every checkout, several per action. A connection
    that was in use a moment ago is alive as far as anyone can tell; one that sat idle may have
    been closed by a restart, a failover or a proxy's idle timeout, and is checked (and replaced
    if dead) before the action uses it. A connection that dies between two actions still fails
    the action that finds out, fail closed, and is then discarded like any other.
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["interlock_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("interlock_idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_S:
            return
        try:
            if dbapi_conn.closed:
                raise DisconnectionError("connection closed")
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.rollback()
        except Exception as exc:  # the pool discards it and checks out (or opens) another
            raise DisconnectionError(f"idle connection is gone: {exc}") from exc


def _sqlite_engine(url: str, db: DatabaseSettings) -> Engine:
    path = url.split("///", 1)[1] if "///" in url else ""
    memory = path in ("", ":memory:")
    if not memory:
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"echo": db.echo, "connect_args": {"check_same_thread": False, "timeout": 30}}
    if memory:
        from sqlalchemy.pool import StaticPool

        kwargs["poolclass"] = StaticPool
    else:
        # One connection per checkout keeps locking simple across threads; WAL makes opens cheap.
        kwargs["pool_size"] = db.pool_size
        kwargs["max_overflow"] = db.pool_size
    engine = create_engine(url, **kwargs)
    synchronous = db.sqlite_synchronous
    checkpointer = None if memory else _Checkpointer(str(Path(path).expanduser().resolve()))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Take transaction control from the driver so we can emit BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if checkpointer is not None:
            cur.execute("PRAGMA journal_mode=WAL")
            # A checkpoint (copying the WAL into the database file and syncing it) lands on
            # whichever commit crosses the threshold: a few ms every ~60 actions. A background
            # thread checkpoints five times a second so commits rarely have to; the threshold stays as
            # the bound on the WAL's size under sustained load.
            cur.execute("PRAGMA wal_autocheckpoint=4000")
            checkpointer.ensure_started()
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Write transactions take the write lock up front: no deadlocking lock upgrades, and
        # read-modify-write sequences (counters, the audit head) serialize across processes.
        # Reads (see `reading`) take a snapshot and block nobody.
        # Straight to the driver: this runs for every transaction, and the statement needs no
        # SQLAlchemy processing.
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.execute(
            "BEGIN" if conn.get_execution_options().get("interlock_read_only") else "BEGIN IMMEDIATE"
        )

    if checkpointer is not None:
        stop = checkpointer.stop
        event.listen(engine, "engine_disposed", lambda _engine: stop())
    return engine


class _Checkpointer:
    """Runs PASSIVE WAL checkpoints on its own connection every ``every_s`` seconds."""

    def __init__(self, path: str, every_s: float = 0.2) -> None:
        self._path = path
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="interlock-wal-checkpoint", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)  # its connection is closed before the engine's owner moves on

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False, isolation_level=None)
        except sqlite3.Error:
            return
        try:
            while not self._stop.wait(self._every_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # busy or going away: the next round tries again
                    continue
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        finally:
            conn.close()


class WriterLock:
    """SQLite's one writer at a time, queued by Interlock instead of by SQLite's busy handler.

    A writer that finds SQLite's lock taken sleeps in the busy handler, 1 ms, then 2, 5, 10 and up
    to 100 ms between tries, which turns contention into idle cores and long tails. Writers in one
    process queue on a lock of their own, which hands over at once. Writers in other processes
    (``serve --workers N``, a CLI command beside a server) queue on an exclusive ``flock`` of a
    file beside the database (``<database>-writer.lock``), tried every few tens of microseconds.
    Both are taken before ``BEGIN IMMEDIATE`` and let go after the commit or rollback, so SQLite's
    own lock is found free; a program that writes to the file without Interlock still meets
    SQLite's busy handler, as before.

    Both waits give up after ``timeout_s`` with :class:`StorageError`, as SQLite's busy timeout
    would. The kernel releases a ``flock`` when its holder dies, even by ``kill -9``. Where the lock
    file cannot be opened (a read-only directory, a platform without ``flock``), only this
    process's writers are queued."""

    def __init__(self, lock_path: str | None, *, timeout_s: float = 30.0) -> None:
        self._path = lock_path
        self._timeout_s = timeout_s
        self._local = threading.RLock()
        self._depth = 0  # changed only by the thread holding ``_local``
        self._fd: int | None = None
        self._pid = 0

    def acquire(self) -> None:
        if not self._local.acquire(timeout=self._timeout_s):
            raise StorageError("database error: OperationalError: database is locked (by this process)")
        if self._depth == 0 and self._path is not None:
            try:
                self._lock_file()
            except BaseException:
                self._local.release()
                raise
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._local.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _lock_file(self) -> None:
        fd = self._file()
        if fd is None:
            return
        deadline = time.monotonic() + self._timeout_s
        pause = 20e-6
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(
                        "database error: OperationalError: database is locked (by another process)"
                    ) from None
            time.sleep(pause)
            pause = min(pause * 2, 400e-6)

    def _file(self) -> int | None:
        # Opened in the process that uses it: a descriptor inherited across fork() shares its
        # lock with the parent's.
        pid = os.getpid()
        if self._pid != pid:
            self._pid, self._fd = pid, None
            if fcntl is not None and self._path is not None:
                # Whoever may read the database may queue on its writers (flock needs no more
                # than a read-only descriptor): the file takes the database file's permissions,
                # or SQLite's own for a file it creates.
                try:
                    mode = os.stat(self._path.removesuffix(_LOCK_SUFFIX)).st_mode & 0o666
                except OSError:
                    mode = 0o644
                try:
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, mode)
                except OSError:
                    self._path = None
        return self._fd

    def close(self) -> None:
        """Close the lock file (the engine is disposed); a later write opens it again."""
        fd, pid = self._fd, self._pid
        self._fd, self._pid = None, 0
        if fd is not None and pid == os.getpid():
            with suppress(OSError):
                os.close(fd)


_LOCK_SUFFIX = "-writer.lock"
_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, WriterLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def write_lock(engine: Engine) -> WriterLock | None:
    """The SQLite engine's :class:`WriterLock`; ``None`` on PostgreSQL, which has no one-writer lock."""
    if engine.dialect.name != "sqlite":
        return None
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        with _LOCKS_GUARD:
            lock = _WRITE_LOCKS.get(engine)
            if lock is None:
                database = engine.url.database
                path = None
                if database not in (None, "", ":memory:"):
                    path = f"{Path(str(database)).expanduser().resolve()}{_LOCK_SUFFIX}"
                lock = _WRITE_LOCKS[engine] = WriterLock(path)
                event.listen(engine, "engine_disposed", lambda _engine: lock.close())
    return lock


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction; SQLAlchemy errors become :class:`StorageError`."""
    lock = write_lock(engine)
    try:
        if lock is None:
            with engine.begin() as conn:
                yield conn
        else:
            with lock, engine.begin() as conn:
                yield conn
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc.__class__.__name__}: {short_error(exc)}") from exc


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    try:
        with engine.connect() as conn:
            conn.execution_options(interlock_read_only=True)
            yield conn
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {exc.__class__.__name__}: {short_error(exc)}") from exc


def short_error(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:300] if text else ""


def insert_ignore(conn: Conn, table: Any, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on either engine; True when a row was written."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    stmt = (
        dialect.insert(table).values(**values).on_conflict_do_nothing().returning(*table.primary_key.columns)
    )
    return conn.execute(stmt).first() is not None


__all__ = ["insert_ignore", "is_sqlite", "make_engine", "reading", "transaction"]
