"""Many writers, one chain: separate OS processes and threads append at once without gaps or forks."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import defaultdict

import pytest
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import append_event_tx, iter_events
from interlock._internal.audit.verify import verify_chain
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade
from interlock._internal.store.tables import metadata

# Each worker connects first, reports "ready", then waits for the parent's "go" so that all of them
# append at the same moment rather than one after the other.
WORKER = """
import sys
from interlock._internal.audit.chain import append_event_tx
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store.engine import make_engine

url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
engine = make_engine(DatabaseSettings(url=url, pool_size=1))
with engine.connect() as conn:
    conn.exec_driver_sql("SELECT 1")
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    append_event_tx(engine, kind="test.concurrent", actor=name, data={"worker": name, "i": i})
engine.dispose()
print("done", flush=True)
"""


def _run_workers(url: str, workers: int, count: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, f"w{n}", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert out.strip() == "done"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _assert_complete_chain(engine: Engine, writers: int, count: int) -> None:
    report = verify_chain(engine)
    assert report.ok, report.message
    assert report.events == writers * count
    events = list(iter_events(engine))
    assert [e.seq for e in events] == list(range(1, writers * count + 1))
    per_writer: dict[str, list[int]] = defaultdict(list)
    for event in events:
        per_writer[event.data["worker"]].append(event.data["i"])
    # Each writer's events are all there, in the order it appended them.
    assert dict(per_writer) == {w: list(range(count)) for w in per_writer}
    assert len(per_writer) == writers


def test_processes_append_at_once(db_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=db_url))
    try:
        upgrade(engine)
        _run_workers(db_url, workers=4, count=50)
        _assert_complete_chain(engine, writers=4, count=50)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_processes_race_for_the_first_event(pg_url: str) -> None:
    # No migration: the tip record does not exist yet, so every worker's first append races to
    # create it.
    engine = make_engine(DatabaseSettings(url=pg_url))
    try:
        metadata.create_all(engine)
        _run_workers(pg_url, workers=4, count=10)
        _assert_complete_chain(engine, writers=4, count=10)
    finally:
        engine.dispose()


def test_threads_append_at_once(db_url: str) -> None:
    engine = make_engine(DatabaseSettings(url=db_url, pool_size=8))
    try:
        upgrade(engine)
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def work(name: str) -> None:
            try:
                start.wait()
                for i in range(25):
                    append_event_tx(engine, kind="test.concurrent", actor=name, data={"worker": name, "i": i})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        _assert_complete_chain(engine, writers=8, count=25)
    finally:
        engine.dispose()
