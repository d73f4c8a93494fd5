"""What a verifier gate's policy question costs: the settle decision (one Cedar request on the verb
verify) beside the action's own policy decision, on the reference workflow with a verifier.

    python bench/verifier.py [--n 3000]

The two alternate call by call, so other work on the machine weighs on both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from interlock._internal.gateway.runtime import build_runtime  # noqa: E402
from interlock._internal.policy import engine as policy_engine  # noqa: E402
from interlock._internal.policy.cedar_values import args_to_cedar  # noqa: E402
from interlock._internal.policy.verify import decide_settle  # noqa: E402
from verifier_manifest import verifier_manifest  # noqa: E402

ARGS = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    n = parser.parse_args().n
    runtime = build_runtime(verifier_manifest())
    spec = runtime.tools["payments.refund"].spec
    context = {
        "workflow": runtime.name,
        "environment": "production",
        "tool": spec.name,
        "risk": ["money"],
        "steps": 0,
        "tool_calls": 0,
        "args": args_to_cedar(ARGS, spec.input_schema),
        "data_classes": [],
    }

    def decide() -> None:
        policy_engine.decide(
            runtime.compiled, agent_id="triage-bot", verb="refund", tool=spec.name, context=context
        )

    def settle() -> None:
        decide_settle(
            runtime.compiled,
            verifier="refund-checker",
            workflow=runtime.name,
            environment="production",
            tool=spec.name,
            verb="refund",
            risk=["money"],
            arguments=ARGS,
            input_schema=spec.input_schema,
            data_classes=[],
            verdict="approve",
        )

    for fn in (decide, settle):  # warm the slices
        fn()
    times: dict[str, list[float]] = {"decide": [], "settle": []}
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for i in range(n):
        order = (
            [("decide", decide), ("settle", settle)]
            if i % 2 == 0
            else [("settle", settle), ("decide", decide)]
        )
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e6)
    d, s = statistics.median(times["decide"]), statistics.median(times["settle"])
    print(f"action's policy decision  median {d:8.1f} µs")
    print(f"verifier settle decision  median {s:8.1f} µs  ({s / d:.2f} times the action's decision)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
