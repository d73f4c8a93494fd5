"""SQLite's writers queue on Interlock's own writer lock (``store/engine.py``): threads of one
process on a lock, processes on an exclusive ``flock`` of ``<database>-writer.lock``. The lock is
only a queue in front of SQLite's own lock, so what must hold is that writes from several processes
all land, that a holder that dies frees it, that a holder that never lets go ends in a clear error
after the timeout, and that nothing changes where the file cannot be used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import WriterLock, make_engine, transaction, write_lock
from interlock._internal.store.hot import hot_read, hot_write
from interlock.exceptions import StorageError

fcntl = pytest.importorskip("fcntl")

BUMP = text("UPDATE c SET v = v + 1 WHERE id = 1")
READ = text("SELECT v FROM c WHERE id = 1")

WRITER = textwrap.dedent(
    """
    import sys, threading
    from sqlalchemy import text
    from interlock._internal.settings import DatabaseSettings
    from interlock._internal.store.engine import make_engine
    from interlock._internal.store.hot import hot_write

    engine = make_engine(DatabaseSettings(url=sys.argv[1]))
    bump = text("UPDATE c SET v = v + 1 WHERE id = 1")

    def loop():
        for _ in range(int(sys.argv[2])):
            with hot_write(engine) as tx:
                tx.execute(bump)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    engine.dispose()
    """
)

HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(600)
    """
)


def _database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(DatabaseSettings(url=url))
    with transaction(engine) as conn:
        conn.execute(text("CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO c VALUES (1, 0)"))
    engine.dispose()
    return url


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def test_writes_from_several_processes_all_land(tmp_path: Path) -> None:
    url = _database(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, url, "150"], env=_env(), stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    engine = make_engine(DatabaseSettings(url=url))
    try:
        for _ in range(150):  # this process writes too, through the SQLAlchemy path
            with transaction(engine) as conn:
                conn.execute(BUMP)
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.decode()
        with hot_read(engine) as tx:
            assert tx.execute(READ).scalar_one() == 3 * 4 * 150 + 150
        assert (tmp_path / "w.db-writer.lock").exists()
    finally:
        engine.dispose()


def test_a_holder_in_another_process_delays_writes_and_its_death_frees_them(tmp_path: Path) -> None:
    url = _database(tmp_path)
    engine = make_engine(DatabaseSettings(url=url))
    lock_file = tmp_path / "w.db-writer.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        done = threading.Event()

        def write() -> None:
            with hot_write(engine) as tx:
                tx.execute(BUMP)
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        assert not done.wait(0.5)  # queued behind the other process, not failed
        os.kill(holder.pid, signal.SIGKILL)  # the kernel lets go of a dead holder's lock
        assert done.wait(30)
        writer.join()
        with hot_read(engine) as tx:
            assert tx.execute(READ).scalar_one() == 1
    finally:
        holder.kill()
        holder.wait()
        engine.dispose()


def test_a_holder_that_never_lets_go_ends_in_a_clear_error(tmp_path: Path) -> None:
    lock_file = tmp_path / "x-writer.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        lock = WriterLock(str(lock_file), timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(StorageError, match="database is locked"):
            lock.acquire()
        assert time.monotonic() - started >= 0.3
        # The failed attempt left this process's own queue free.
        assert lock._local.acquire(blocking=False)
        lock._local.release()
    finally:
        holder.kill()
        holder.wait()


def test_nested_writes_on_one_thread_and_across_engines_of_one_file(tmp_path: Path) -> None:
    url = _database(tmp_path)
    engine = make_engine(DatabaseSettings(url=url))
    try:
        lock = write_lock(engine)
        assert lock is not None
        with lock, lock, hot_write(engine) as tx:  # re-entered by its holder: no deadlock
            tx.execute(BUMP)
        # Another engine on the same file (a second Interlock in one process) queues on the file.
        other = make_engine(DatabaseSettings(url=url))
        try:
            with transaction(other) as conn:
                conn.execute(BUMP)
        finally:
            other.dispose()
        with hot_read(engine) as tx:
            assert tx.execute(READ).scalar_one() == 2
    finally:
        engine.dispose()


def test_without_a_usable_lock_file_writes_still_work(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    lock = WriterLock(str(blocker / "w.db-writer.lock"))
    with lock:  # only this process's writers are queued
        pass
    memory = make_engine(DatabaseSettings(url="sqlite://"))
    try:
        with transaction(memory) as conn:
            conn.execute(text("CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
            conn.execute(text("INSERT INTO c VALUES (1, 0)"))
        with hot_write(memory) as tx:
            tx.execute(BUMP)
        with hot_read(memory) as tx:
            assert tx.execute(READ).scalar_one() == 1
    finally:
        memory.dispose()


def test_the_engine_still_writes_after_dispose(tmp_path: Path) -> None:
    url = _database(tmp_path)
    engine = make_engine(DatabaseSettings(url=url))
    with hot_write(engine) as tx:
        tx.execute(BUMP)
    engine.dispose()  # closes the lock file; the next write opens it again
    with hot_write(engine) as tx:
        tx.execute(BUMP)
    lock = write_lock(engine)
    assert lock is not None
    assert lock._fd is not None
    with hot_read(engine) as tx:
        assert tx.execute(READ).scalar_one() == 2
    engine.dispose()


def test_the_lock_file_takes_the_database_files_permissions(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "w.db") as conn:
        conn.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        conn.execute("INSERT INTO c VALUES (1, 0)")
    (tmp_path / "w.db").chmod(0o640)
    engine = make_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'w.db'}"))
    try:
        with hot_write(engine) as tx:
            tx.execute(BUMP)
        assert (tmp_path / "w.db-writer.lock").stat().st_mode & 0o777 == 0o640 & ~_umask()
    finally:
        engine.dispose()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
