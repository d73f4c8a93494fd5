"""How Interlock grows with the number of tools in a workflow.

Generates two manifests of the same shape, one with 10 tools and one with ``--tools`` (default
1,000): every tool has an input schema, tools cycle through the verbs, and each tool carries its own
rules (an argument-dependent forbid on every fifth tool, a review rule on every money tool), as a
large real catalogue would. Then, side by side in one process:

(a) manifest load: parse, validate, compile to Cedar, build the runtime (median of --loads);
(b) the policy decision for one allowed read (schema, risk, Cedar), the two manifests alternating
    call by call;
(c) tools/list for an agent: what the MCP gateway computes on the first list of a manifest version
    (every tool's visibility), then the cached list an agent gets afterwards.

Run: python bench/scale.py [--tools 1000] [--n 3000] [--loads 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--loads", type=int, default=3)
    opts = parser.parse_args()

    from interlock._internal.api.mcp_gateway import visible_tools
    from interlock._internal.gateway.decide import Intent, evaluate
    from interlock._internal.gateway.runtime import build_runtime
    from interlock._internal.manifest.loader import load_manifest

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    sizes = (10, opts.tools)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "noop_tool.py").write_text("def noop(record_id, **kw):\n    return {'ok': True}\n")
        paths = {}
        for n in sizes:
            paths[n] = d / f"workflow-{n}.yaml"
            paths[n].write_text(manifest_text(n))

        print(f"(a) manifest load (parse, validate, compile, runtime), median of {opts.loads}")
        runtimes: dict[int, Any] = {}
        loads: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(opts.loads):
            for n in sizes:
                t0 = time.perf_counter()
                rt = build_runtime(load_manifest(paths[n]))
                loads[n].append(time.perf_counter() - t0)
                runtimes[n] = rt
        for n in sizes:
            line(f"{n} tools", loads[n], unit="ms")

        print("(b) policy decision for one allowed read, alternating")
        intent = Intent(tool="sys0.op0", arguments={"record_id": "R-1", "limit": 5})
        decide: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(200):
            for n in sizes:
                evaluate(runtimes[n], agent_id="bot", environment="production", intent=intent)
        for _ in range(opts.n):
            for n in sizes:
                t0 = time.perf_counter()
                v = evaluate(runtimes[n], agent_id="bot", environment="production", intent=intent)
                decide[n].append(time.perf_counter() - t0)
                assert v.decision.decision == "allow", v.decision
        small = line(f"{sizes[0]} tools", decide[sizes[0]])
        big = line(f"{sizes[1]} tools", decide[sizes[1]])
        ratios = [b / s for s, b in zip(decide[sizes[0]], decide[sizes[1]], strict=True)]
        print(
            f"  ratio {sizes[1]}/{sizes[0]} tools: {big / small:.2f}x of medians, "
            f"median of per-call ratios {statistics.median(ratios):.2f}x (target <= 1.3x)"
        )

        print("(c) tools/list for one agent")
        first: dict[int, list[float]] = {n: [] for n in sizes}
        cached: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(max(3, opts.loads)):
            for n in sizes:
                runtimes[n].memo.clear()
                t0 = time.perf_counter()
                shown = visible_tools(runtimes[n], "bot", environment="production")
                first[n].append(time.perf_counter() - t0)
        for _ in range(200):
            for n in sizes:
                t0 = time.perf_counter()
                visible_tools(runtimes[n], "bot", environment="production")
                cached[n].append(time.perf_counter() - t0)
        for n in sizes:
            line(f"first list, {n} tools", first[n], unit="ms")
        for n in sizes:
            line(f"later lists, {n} tools", cached[n])
        print(f"  the agent sees {len(shown)} of {opts.tools} tools (target: first list <= 5 ms)")
        for rt in runtimes.values():
            rt.close()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
