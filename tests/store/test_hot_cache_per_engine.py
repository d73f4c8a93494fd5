"""The hot path's compiled statements belong to one engine's dialect: a process that opened a
database without a data key and then one with a key encrypts (and reads) the second's payloads.

Before, statements were cached by dialect name, so the second engine reused the first's column
processors: its hot-path writes were stored in clear and its reads failed naming a missing key.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import text

from conftest import Harness
from interlock._internal.store.encryption import PREFIX


def test_a_second_engine_with_a_data_key_encrypts_its_hot_path_writes(tmp_path: Path) -> None:
    plain = Harness(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        run = plain.run()
        assert plain.act(run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"
    finally:
        plain.close()
    keyed = Harness(
        f"sqlite:///{tmp_path / 'keyed.db'}",
        storage={"encryption_keys": {"k1": secrets.token_hex(32)}, "encryption_key_id": "k1"},
    )
    try:
        run = keyed.run()
        assert keyed.act(run, "tickets.get", {"ticket_id": "T-1002"}).status == "executed"
        with keyed.il.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT arguments FROM steps WHERE run_id = :run"), {"run": run}
            ).scalar_one()
        assert str(stored).startswith(PREFIX)
        assert keyed.il.get_run(run).steps_detail[0].arguments == {"ticket_id": "T-1002"}
    finally:
        keyed.close()
