"""``interlock db``: where the database's schema stands, and migrating it on purpose.

``serve`` and every command that opens the database migrate it on their own; these commands are
for deployments that migrate as a separate step (a Kubernetes Job, a release pipeline) and for
checking before and after.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from interlock._internal.cli.common import (
    check_database,
    console,
    err_console,
    fail_from,
    load_settings,
    print_json,
)
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.service import Interlock
    from interlock._internal.store.migrate import SchemaStatus

app = typer.Typer(help="The database schema: current revision, upgrade, check.", no_args_is_help=True)

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

# `db check` exit codes: 0 up to date, 1 migrations to apply or tables that differ from the model,
# 3 migrated by a newer Interlock (2 is the CLI's own code for a wrong command line).
EXIT_BEHIND = 1
EXIT_NEWER = 3


@app.callback()
def _group() -> None:
    """The database schema: current revision, upgrade, check."""


def _interlock(db: str | None) -> Interlock:
    # Only its engine is used: building it opens nothing until the first statement.
    from interlock._internal.service import Interlock

    return Interlock(load_settings(db))


@app.command()
def current(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Print the database's schema revision and the newest this Interlock knows."""
    from interlock._internal.store.migrate import status

    il = _interlock(db)
    try:
        st = status(il.engine)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        il.close()
    if as_json:
        print_json(st.as_dict())
    else:
        console.print(f"current: {st.current or '(empty database)'}", highlight=False)
        console.print(f"head:    {st.head}", highlight=False)
        console.print(st.message, highlight=False, soft_wrap=True)


@app.command()
def upgrade(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Apply every migration up to the newest; refuse a database a newer Interlock migrated."""
    from interlock._internal.store import migrate

    il = _interlock(db)
    try:
        engine = il.engine
        before = migrate.status(engine)
        migrate.upgrade(engine)
        after = migrate.status(engine)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        il.close()
    if as_json:
        print_json({"from": before.current, "to": after.current, "applied": before.pending})
    elif before.pending:
        console.print(
            f"migrated {before.current or '(empty database)'} → {after.current}: "
            f"applied {', '.join(before.pending)}",
            highlight=False,
        )
    else:
        console.print(f"already at {after.current}; nothing to apply", highlight=False)


@app.command()
def check(
    db: DbOpt = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to keep checking until the schema is current (for a pod that waits on a "
            "migration Job); 0 checks once.",
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Exit 0 when the schema is current and its tables match this Interlock's model; 1 when
    migrations are pending or the tables differ; 3 when a newer Interlock migrated it."""
    from interlock._internal.store import migrate

    il = _interlock(db)
    deadline = time.monotonic() + wait
    said = False
    try:
        engine = il.engine
        while True:
            try:
                st: SchemaStatus = migrate.status(engine)
            except InterlockError as exc:
                if time.monotonic() >= deadline:  # a database that is not up yet counts as waiting
                    fail_from(exc, as_json=as_json)
            else:
                if st.state in ("current", "newer") or time.monotonic() >= deadline:
                    break
                if not said:  # once, on stderr: a pod's log says why it has not started
                    err_console.print(
                        f"waiting for the schema: {st.message}", highlight=False, soft_wrap=True
                    )
                    said = True
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        drift = migrate.drift(engine) if st.state == "current" else []
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        il.close()
    ok = st.state == "current" and not drift
    if as_json:
        print_json({**st.as_dict(), "drift": drift, "ok": ok})
    else:
        console.print(st.message, highlight=False, soft_wrap=True)
        for line in drift:
            console.print(f"  differs from the model: {line}", highlight=False, soft_wrap=True)
    if st.state == "newer":
        raise SystemExit(EXIT_NEWER)
    if not ok:
        raise SystemExit(EXIT_BEHIND)


@app.command()
def keys(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Count stored payloads by the data key id they are encrypted with ("(clear)": not encrypted)."""
    from interlock._internal.service import Interlock
    from interlock._internal.store.migrate import upgrade
    from interlock._internal.store.reencrypt import key_usage

    settings = load_settings(db)
    check_database(settings, as_json=as_json)
    il = Interlock(settings)
    try:
        upgrade(il.engine)
        usage = key_usage(il.engine)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        il.close()
    totals: dict[str, int] = {}
    for counts in usage.values():
        for key_id, n in counts.items():
            totals[key_id] = totals.get(key_id, 0) + n
    if as_json:
        print_json({"keys": totals, "columns": usage})
        return
    if not totals:
        console.print("no stored payloads", highlight=False)
    for key_id, n in sorted(totals.items()):
        console.print(f"{key_id}: {n} values", highlight=False)


@app.command()
def reencrypt(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Rewrite every stored payload under the current data key (storage.encryption_key_id), after a
    key rotation; safe beside running servers. Then `interlock db keys` shows the old id unused."""
    from interlock._internal.service import Interlock
    from interlock._internal.store.migrate import upgrade
    from interlock._internal.store.reencrypt import reencrypt as rewrite

    settings = load_settings(db)
    check_database(settings, as_json=as_json)
    il = Interlock(settings)
    try:
        upgrade(il.engine)
        with err_console.status("re-encrypting…") as status:
            done = rewrite(il.engine, progress=lambda column, n: status.update(f"{column}: {n}…"))
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    finally:
        il.close()
    key_id = il.settings.storage.encryption_key_id
    if as_json:
        print_json({"key_id": key_id, "rewritten": done, "total": sum(done.values())})
        return
    console.print(f"re-encrypted {sum(done.values())} values under key {key_id}", highlight=False)
