"""Running the independent bundle verifier (``tests/audit/node_verifier/verify.mjs``) from tests.

Node.js is needed; without it the calling test is skipped, unless ``INTERLOCK_REQUIRE_NODE=1`` (as
CI sets), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

VERIFIER = Path(__file__).parent / "audit" / "node_verifier" / "verify.mjs"


def need_node() -> None:
    if shutil.which("node") is not None:
        return
    message = "the independent bundle verifier needs Node.js (`node` is not on PATH)"
    if os.environ.get("INTERLOCK_REQUIRE_NODE") == "1":
        pytest.fail(message + " (INTERLOCK_REQUIRE_NODE=1)")
    pytest.skip(message)


def node_verify(bundle: Path | None, key_hex: str, *extra: str) -> dict[str, Any]:
    """The verifier's report on ``bundle`` (or only on ``--consistency FILE`` when ``None``)."""
    need_node()
    done = subprocess.run(
        ["node", str(VERIFIER), *([] if bundle is None else [str(bundle)]), "--public-key", key_hex, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    return report
