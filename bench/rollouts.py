"""What a rollout costs, in the embedded pipeline, side by side.

(a) Starting a run: today's ``start_run`` (one read of the workflow's rollout state, so that every
    replica assigns runs alike and follows a promotion) against the same call with that read
    skipped (as before rollouts).
(b) One governed read (``tickets.get`` of the reference workflow) in a run outside any rollout,
    and in a run of a running shadow rollout, where the candidate judges the action too and the
    comparison is recorded (one more read of the rollout's state, the pure stages of the
    candidate, one write transaction).

The two sides alternate so that noise from other work on the machine hits both alike. Medians
and p90 in milliseconds, and their ratio. SQLite by default; ``--db URL`` for PostgreSQL.

Run: python bench/rollouts.py [--n 300] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "examples" / "support-triage" / "workflow.yaml"


def _variant(text: str, *edits: tuple[str, str]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def _stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9)] * 1000


def _row(label: str, before: list[float], after: list[float]) -> None:
    b50, b90 = _stats(before)
    a50, a90 = _stats(after)
    print(f"{label:<44} {b50:8.3f} {b90:8.3f}   {a50:8.3f} {a90:8.3f}   x{a50 / b50:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()

    from interlock import Interlock, Settings
    from interlock._internal.manifest.loader import load_manifest_text

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SUPPORT_DESK_DB"] = str(Path(tmp) / "desk.db")
        url = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        # Long runs without loop detection, so one run takes every repeated read.
        text = _variant(
            REFERENCE.read_text(encoding="utf-8"),
            ("    max_repeats: 3\n", ""),
            ("max_steps: 40", "max_steps: 100000"),
            ("max_tool_calls: 30", "max_tool_calls: 100000"),
            ("max_duration_s: 900", "max_duration_s: 86400"),
            ("max_cost_usd: 2.0", "max_cost_usd: 100000"),
        )
        active = load_manifest_text(text, base_dir=REFERENCE.parent)
        candidate = load_manifest_text(
            _variant(
                text,
                (
                    "    - {id: no-deletes,",
                    "    - {id: no-updates, tool: tickets.update}\n    - {id: no-deletes,",
                ),
            ),
            base_dir=REFERENCE.parent,
        )
        il = Interlock(Settings(database={"url": url}))  # type: ignore[arg-type]
        il.migrate()
        runtime = il.load_workflow(active)
        creds = il.agents.create("triage-bot", workflow=runtime.name, environment="production", actor="bench")
        token = il.issue_token(creds.client_id, creds.client_secret).token
        service = il.rollouts
        real = service.assignment

        def without_read(workflow: str, rt: object) -> tuple[object, None]:
            return rt, None

        def start(skip: bool) -> Callable[[], object]:
            def call() -> object:
                service.assignment = without_read if skip else real  # type: ignore[method-assign,assignment]
                try:
                    return il.start_run(token)
                finally:
                    service.assignment = real  # type: ignore[method-assign]

            return call

        outside = il.start_run(token).id
        il.rollouts.start(candidate, actor="bench")
        inside = il.start_run(token).id
        read = {"ticket_id": "T-1001"}
        for _ in range(20):  # warm up both paths
            il.act(token, outside, "tickets.get", read)
            il.act(token, inside, "tickets.get", read)
            start(True)()
            start(False)()

        starts: dict[bool, list[float]] = {True: [], False: []}
        acts: dict[bool, list[float]] = {True: [], False: []}
        for i in range(args.n):
            for skip in (i % 2 == 0, i % 2 != 0):
                t0 = time.perf_counter()
                start(skip)()
                starts[skip].append(time.perf_counter() - t0)
            for shadowed in (i % 2 == 0, i % 2 != 0):
                t0 = time.perf_counter()
                result = il.act(token, inside if shadowed else outside, "tickets.get", read)
                acts[shadowed].append(time.perf_counter() - t0)
                assert result.status == "executed", result.status
        compared = il.rollouts.status(runtime.name)["total"]
        print(
            f"{il.engine.dialect.name}, {args.n} samples per side; {compared} actions compared by the shadow"
        )
        print(f"{'':<44} {'before':>17}   {'after':>17}")
        print(f"{'ms':<44} {'median':>8} {'p90':>8}   {'median':>8} {'p90':>8}   ratio")
        _row("start_run: rollout state read skipped | read", starts[True], starts[False])
        _row("tickets.get: no rollout | in a shadow rollout", acts[False], acts[True])
        il.close()


if __name__ == "__main__":
    main()
