"""How Interlock grows with the number of tools in a workflow.

Generates two manifests of the same shape, one with 10 tools and one with ``--tools`` (default
1,000): every tool has an input schema, tools cycle through the verbs, and each tool carries its own
rules (an argument-dependent forbid on every fifth tool, a review rule on every money tool), as a
large real catalogue would. Then, side by side in one process:

(a) manifest load: parse, validate, compile to Cedar, build the runtime (median of --loads);
(b) the policy decision for one allowed read (schema, risk, Cedar), the two manifests alternating
    call by call;
(c) tools/list for an agent: the first list of a manifest version, right after it is loaded
    (on a freshly built runtime); the same list decided again in that version with its cache
    cleared (what deciding one agent's list costs); the first page the MCP gateway answers on a
    fresh runtime (the list plus the page's tool descriptors); then the cached list an agent gets
    afterwards. Wall time, and the thread's CPU time beside it.

With ``--baseline DIR`` (another checkout, e.g. a ``git worktree`` of main before a change), each
side runs in its own process from its own ``src/``, ``--rounds`` times, alternating which side
goes first; medians over all rounds, and the median of per-round ratios after/before.

Run: python bench/scale.py [--tools 1000] [--n 3000] [--loads 3] [--baseline DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = 100  # mcp.page_size's default

VERBS = ["read", "draft", "create", "update", "send", "refund", "delete"]


def manifest_text(n_tools: int) -> str:
    """A workflow with ``n_tools`` tools; tool 0 is the read every decision asks about."""
    tools: list[str] = []
    forbids: list[str] = []
    reviews: list[str] = []
    for i in range(n_tools):
        verb = VERBS[i % len(VERBS)]
        name = f"sys{i // 50}.op{i}"
        traits = ["money"] if verb == "refund" else (["pii"] if i % 3 == 0 else [])
        tools.append(
            f"""  - name: {name}
    verb: {verb}
    traits: {traits}
    input_schema:
      type: object
      properties:
        record_id: {{type: string, pattern: "^R-[0-9]{{1,8}}$"}}
        amount: {{type: number, minimum: 0, maximum: 100000}}
        limit: {{type: integer, minimum: 1, maximum: 100}}
        note: {{type: string, maxLength: 500}}
      required: [record_id]
    upstream: {{kind: python, callable: "noop_tool:noop"}}"""
        )
        if i % 5 == 4:
            forbids.append(f'    - {{id: big-{i}, tool: {name}, when: "limit > 90"}}')
        if verb == "refund":
            reviews.append(f'    - {{id: refund-{i}, tool: {name}, when: "amount > 50"}}')
    return "\n".join(
        [
            "name: scale",
            'version: "1"',
            "owner: bench@example.com",
            "objective: measure growth in tools",
            "success_metric: {name: speed}",
            "environments: [production]",
            "agents:",
            "  - {id: bot, environment: production, roles: [worker]}",
            "  - {id: viewer, environment: production, roles: [analyst]}",
            "roles:",
            "  worker: {verbs: [read, draft, create, update, send, refund]}",
            "  analyst: {verbs: [read]}",
            "tools:",
            *tools,
            "rules:",
            "  allow:",
            "    - {id: reads, verb: read}",
            "    - {id: drafts, verb: draft}",
            "    - {id: refunds, verb: refund}",
            "  require_approval:",
            *(reviews or ["    []"]),
            "  forbid:",
            "    - {id: no-deletes, verb: delete}",
            *forbids,
        ]
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def line(label: str, seconds: list[float], unit: str = "µs") -> float:
    scale = 1e6 if unit == "µs" else 1e3
    vals = [s * scale for s in seconds]
    med = statistics.median(vals)
    print(f"  {label:<44} median {med:10.1f} {unit}   p99 {pct(vals, 0.99):10.1f} {unit}   n={len(vals)}")
    return med


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Every figure's samples, in seconds, from the interlock on this process's path."""
    from interlock._internal.api.mcp_gateway import _catalogue, visible_tools
    from interlock._internal.gateway.decide import Intent, evaluate
    from interlock._internal.gateway.runtime import build_runtime
    from interlock._internal.identity.tokens import AgentPrincipal
    from interlock._internal.manifest.loader import load_manifest

    sizes = (10, opts.tools)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "noop_tool.py").write_text("def noop(record_id, **kw):\n    return {'ok': True}\n")
        paths = {}
        for n in sizes:
            paths[n] = d / f"workflow-{n}.yaml"
            paths[n].write_text(manifest_text(n))

        loaded: dict[int, Any] = {}
        runtimes: dict[int, Any] = {}
        for _ in range(opts.loads):
            for n in sizes:
                gc.collect()
                c0, t0 = time.thread_time(), time.perf_counter()
                loaded[n] = load_manifest(paths[n])
                rt = build_runtime(loaded[n])
                out.setdefault(f"load {n}", []).append(time.perf_counter() - t0)
                out.setdefault(f"load {n} cpu", []).append(time.thread_time() - c0)
                if n in runtimes:
                    runtimes[n].close()
                runtimes[n] = rt

        intent = Intent(tool="sys0.op0", arguments={"record_id": "R-1", "limit": 5})
        for _ in range(200):
            for n in sizes:
                evaluate(runtimes[n], agent_id="bot", environment="production", intent=intent)
        for _ in range(opts.n):
            for n in sizes:
                t0 = time.perf_counter()
                v = evaluate(runtimes[n], agent_id="bot", environment="production", intent=intent)
                out.setdefault(f"decision {n}", []).append(time.perf_counter() - t0)
                assert v.decision.decision == "allow", v.decision

        bot = AgentPrincipal(agent_id="bot", workflow="scale", environment="production")

        def timed(name: str, fn: Any, *args: Any) -> Any:
            # Wall time, and this thread's CPU time: on a shared machine the first is mostly
            # other processes' turns when a figure is a few milliseconds.
            gc.collect()
            c0, t0 = time.thread_time(), time.perf_counter()
            got = fn(*args)
            out.setdefault(name, []).append(time.perf_counter() - t0)
            out.setdefault(f"{name} cpu", []).append(time.thread_time() - c0)
            return got

        def listed(runtime: Any) -> list[Any]:
            return list(visible_tools(runtime, "bot", environment="production"))

        def page(runtime: Any) -> list[Any]:
            cat = _catalogue(runtime, bot)
            return cat.page(0, PAGE) if hasattr(cat, "page") else list(cat.tools[:PAGE])

        for _ in range(max(5, opts.loads)):
            for n in sizes:
                # A new version, as a replica serves it. Each is closed and dropped before the
                # next is built, so that freeing one is not counted in the next one's figures.
                fresh = build_runtime(loaded[n])
                shown = timed(f"first list {n}", listed, fresh)
                fresh.memo.clear()  # what deciding one agent's list costs, in the same version
                timed(f"decided list {n}", listed, fresh)
                fresh.close()
                del fresh
                fresh = build_runtime(loaded[n])
                first_page = timed(f"first MCP page {n}", page, fresh)
                assert [t.name for t in first_page] == [t.name for t in shown[:PAGE]]
                fresh.close()
                del fresh, first_page
        for _ in range(200):
            for n in sizes:
                t0 = time.perf_counter()
                visible_tools(runtimes[n], "bot", environment="production")
                out.setdefault(f"later list {n}", []).append(time.perf_counter() - t0)
        out["shown"] = len(shown)
        for rt in runtimes.values():
            rt.close()
    return out


UNITS = {
    "load": "ms",
    "decision": "µs",
    "first list": "ms",
    "decided list": "ms",
    "first MCP page": "ms",
    "later list": "µs",
}


def report(out: dict[str, Any], sizes: tuple[int, int]) -> None:
    print(f"(a) manifest load (parse, validate, compile, runtime), {len(out[f'load {sizes[0]}'])} loads")
    for n in sizes:
        line(f"{n} tools", out[f"load {n}"], unit="ms")
        line(f"{n} tools, CPU", out[f"load {n} cpu"], unit="ms")
    print("(b) policy decision for one allowed read, alternating")
    small = line(f"{sizes[0]} tools", out[f"decision {sizes[0]}"])
    big = line(f"{sizes[1]} tools", out[f"decision {sizes[1]}"])
    ratios = [b / s for s, b in zip(out[f"decision {sizes[0]}"], out[f"decision {sizes[1]}"], strict=True)]
    print(
        f"  ratio {sizes[1]}/{sizes[0]} tools: {big / small:.2f}x of medians, "
        f"median of per-call ratios {statistics.median(ratios):.2f}x (target <= 1.3x)"
    )
    print("(c) tools/list for one agent")
    for what in ("first list", "decided list", "first MCP page"):
        for n in sizes:
            line(f"{what}, {n} tools", out[f"{what} {n}"], unit="ms")
            line(f"{what}, {n} tools, CPU", out[f"{what} {n} cpu"], unit="ms")
    for n in sizes:
        line(f"later lists, {n} tools", out[f"later list {n}"])
    print(f"  the agent sees {out['shown']} of {sizes[1]} tools (target: first list <= 5 ms)")


def side_by_side(opts: argparse.Namespace, sizes: tuple[int, int]) -> None:
    trees = [("before", opts.baseline.resolve() / "src"), ("after", ROOT / "src")]
    rounds: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    args = ["--tools", str(opts.tools), "--n", str(opts.n), "--loads", str(opts.loads), "--emit-json"]
    for r in range(opts.rounds):
        for label, src in trees if r % 2 == 0 else reversed(trees):
            env = {**os.environ, "PYTHONPATH": str(src)}
            done = subprocess.run(
                [sys.executable, __file__, *args], env=env, check=True, capture_output=True, text=True
            )
            rounds[label].append(json.loads(done.stdout.splitlines()[-1]))
            print(f"  round {r + 1} {label}: done, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(
        f"\nmedians over {opts.rounds} rounds per side; after/before: median of per-round ratios of medians"
    )
    print(f"  {'figure':<28}{'before':>14}{'after':>14}{'after/before':>14}")
    for key, samples in rounds["after"][0].items():
        if not isinstance(samples, list):
            continue
        unit = next(u for prefix, u in UNITS.items() if key.startswith(prefix))
        scale = 1e6 if unit == "µs" else 1e3
        meds = {}
        for label in rounds:
            meds[label] = [statistics.median(r[key]) * scale for r in rounds[label]]
        ratio = statistics.median(a / b for a, b in zip(meds["after"], meds["before"], strict=True))
        print(
            f"  {key + ' (' + unit + ')':<28}{statistics.median(meds['before']):>14.2f}"
            f"{statistics.median(meds['after']):>14.2f}{ratio:>13.2f}x"
        )
    for label in rounds:
        big = [statistics.median(r[f"decision {sizes[1]}"]) for r in rounds[label]]
        small = [statistics.median(r[f"decision {sizes[0]}"]) for r in rounds[label]]
        ratio = statistics.median(b / s for b, s in zip(big, small, strict=True))
        print(
            f"  {label}: decision {sizes[1]}/{sizes[0]} tools {ratio:.2f}x; sees {rounds[label][0]['shown']} tools"
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with (its src is used)")
    parser.add_argument("--rounds", type=int, default=3, help="with --baseline: rounds per side")
    parser.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    sizes = (10, opts.tools)
    if opts.emit_json:
        print(json.dumps(measure(opts)))
        return 0
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if opts.baseline is not None:
        side_by_side(opts, sizes)
    else:
        report(measure(opts), sizes)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
