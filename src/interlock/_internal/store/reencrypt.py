"""After a data key rotation: which key ids stored payloads use, and rewriting them under the current one.

``interlock db keys`` counts, per payload column, the values in clear and under each key id;
``interlock db reencrypt`` rewrites every value not under the current key (values in clear
included, purge markers excepted) in small transactions, each row locked while it is rewritten, so
it runs beside live servers. Once no value names an old key id, that key can leave the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, Table, Text, and_, func, not_, select, type_coerce, update
from sqlalchemy.engine import Engine

from interlock._internal.store.encryption import PREFIX, Payload, keyring_of
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.tables import metadata
from interlock.exceptions import ConfigError

_MARKER_PREFIX = '{"purged":true,"sha256":'
CLEAR = "(clear)"


def payload_columns() -> list[tuple[Table, Column[Any]]]:
    """Every payload column, by table in dependency order."""
    return [
        (table, column)
        for table in metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, Payload)
    ]


def key_usage(engine: Engine) -> dict[str, dict[str, int]]:
    """Per ``table.column``: how many values are in clear (purge markers included) and under each
    key id. Key ids are read from the stored values, so keys the settings no longer hold show too."""
    usage: dict[str, dict[str, int]] = {}
    with reading(engine) as conn:
        for table, column in payload_columns():
            raw = type_coerce(column, Text)
            sealed = raw.like(PREFIX + "%")
            counts: dict[str, int] = {}
            clear = conn.execute(
                select(func.count()).select_from(table).where(raw.is_not(None), not_(sealed))
            ).scalar_one()
            if clear:
                counts[CLEAR] = int(clear)
            # The key id is the text between the prefix and the next colon; ids have no colon.
            if conn.dialect.name == "postgresql":
                key_id = func.split_part(raw, ":", 2)
            else:
                rest = func.substr(raw, len(PREFIX) + 1)
                key_id = func.substr(rest, 1, func.instr(rest, ":") - 1)
            for kid, n in conn.execute(select(key_id, func.count()).where(sealed).group_by(key_id)):
                counts[str(kid)] = int(n)
            usage[f"{table.name}.{column.name}"] = counts
    return usage


def reencrypt(
    engine: Engine, *, batch: int = 200, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Rewrite every payload not sealed with the current key; the count per ``table.column``."""
    keyring = keyring_of(engine)
    if keyring is None or keyring.current is None:
        raise ConfigError("storage.encryption_key_id is not set: there is no current key to re-encrypt with")
    current = f"{PREFIX}{keyring.current}:"
    done: dict[str, int] = {}
    for table, column in payload_columns():
        name = f"{table.name}.{column.name}"
        raw = type_coerce(column, Text)
        stale = and_(raw.is_not(None), not_(raw.like(current + "%")), not_(raw.like(_MARKER_PREFIX + "%")))
        keys = list(table.primary_key.columns)
        count = 0
        while True:
            with transaction(engine) as conn:
                query = select(*keys, column).where(stale).order_by(*keys).limit(batch)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update()
                rows = conn.execute(query).all()
                for row in rows:
                    match = and_(*(k == row[i] for i, k in enumerate(keys)))
                    conn.execute(update(table).where(match).values({column.name: row[-1]}))
            count += len(rows)
            if progress is not None and rows:
                progress(name, count)
            if len(rows) < batch:
                break
        done[name] = count
    return done


__all__ = ["CLEAR", "key_usage", "payload_columns", "reencrypt"]
