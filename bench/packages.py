"""What a signed work package costs per action, on SQLite, side by side with a run without one.

Both runs act on the reference workflow (examples/support-triage) with the same kind of action (a
ticket search, allowed alone, so it executes), alternating in rounds so machine noise hits both
alike. The package bounds the number of searches (a cumulative bound: one conditional UPDATE in
the reserving transaction) and the query per action, and its state is read on every action. Prints the median milliseconds per action of each, and the difference.

Run: python bench/packages.py [--n 25] [--rounds 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUERIES = [f"refund {i}" for i in range(30)]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=25)  # the workflow caps a run at 30 tool calls
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-packages-"))
    os.environ["SUPPORT_DESK_DB"] = str(folder / "desk.db")

    from interlock import Interlock, Settings
    from interlock._internal.packages.models import PackageRequest

    il = Interlock(Settings(database={"url": f"sqlite:///{folder / 'il.db'}"}))  # type: ignore[arg-type]
    il.migrate()
    runtime = il.load_workflow(REPO / "examples" / "support-triage" / "workflow.yaml")
    creds = il.agents.create("triage-bot", workflow=runtime.name, environment="production", actor="bench")
    token = il.issue_token(creds.client_id, creds.client_secret).token
    times: dict[str, list[float]] = {"without package": [], "with package": []}
    for _ in range(args.rounds):
        request = PackageRequest.model_validate(
            {
                "workflow": runtime.name,
                "agent": "triage-bot",
                "tools": {
                    "tickets.search": {"max_calls": 1_000_000, "arguments": {"query": {"one_of": QUERIES}}}
                },
            }
        )
        package = il.packages.issue(request, actor="bench")
        runs = {
            "without package": il.start_run(token).id,
            "with package": il.start_run(token, package=package.token).id,
        }
        for name, run in runs.items():
            for i in range(args.n):
                started = time.perf_counter()
                result = il.act(token, run, "tickets.search", {"query": QUERIES[i % len(QUERIES)]})
                times[name].append((time.perf_counter() - started) * 1000)
                assert result.status == "executed", result
            il.finish_run(token, run)
    il.close()
    base = statistics.median(times["without package"])
    for name, samples in times.items():
        print(f"{name:>16}: median {statistics.median(samples):.2f} ms per action ({len(samples)} actions)")
    print(f"{'difference':>16}: {statistics.median(times['with package']) - base:+.2f} ms")


if __name__ == "__main__":
    main()
