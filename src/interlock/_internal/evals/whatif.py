"""Policy what-if: recorded decisions judged again under a candidate manifest, counted by transition.

Rows stream from the ``decisions`` table in batches, oldest first, and equivalent decisions are
judged once. Two recorded actions are equivalent for a candidate when they have the same agent,
environment, tool, confidence (and run counters, if its policies read them) and agree on every
argument the candidate can look at: the paths its Cedar policies read (found in the policy AST),
the paths its risk conditions and stop rules read, and every argument the schema types as a
number (numbers are the only values whose exact conversion to Cedar can fail). That holds only
for arguments that pass the candidate's schema; the others are keyed by their exact text. When
the analysis cannot bound what is read (a policy uses ``context`` or ``context.args`` as a
whole, a stop rule scans all text), the key is the exact arguments. Distinct decisions go
through the pure :func:`evaluate`, in worker processes once there are enough of them to pay for
starting one (Cedar holds the interpreter while it decides). Memory grows with the number of
distinct decisions, not with the number of rows.

What is compared, and what is not:

- What decided besides the policy is taken as recorded where the pipeline would consult it
  again (see :func:`~interlock._internal.runs.replay.reconcile`): decisions by a run-level
  brake are *held* and not re-judged; refusals taken while reserving from counters the record
  does not keep (rate limits, budgets, locks) are held while the candidate still lets the
  action run alone.
- Rules that read the run's history (step and tool-call caps, loop detection, conflicting
  records, sequence failures) are judged again from the recorded steps under the candidate
  (:func:`~interlock._internal.runs.replay.rejudge`), never held: when the candidate has such
  rules, or a recorded refusal came from one, the decision is set aside in the first pass and
  judged in a second one that reads the window's runs step by step, in order (memory grows with
  the longest run, not with the rows).
- Stored arguments are redacted. When a decision changes only through the schema check on
  arguments that redaction altered, it is *not comparable* rather than a change of policy.
- Steps and tool calls reach Cedar's context only when the candidate's policies mention them;
  then ``steps`` is the step's sequence number minus one and ``tool_calls`` is bounded by it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cedarpy
from sqlalchemy import Text, and_, func, null, select, type_coerce
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.models import Reason
from interlock._internal.gateway.runtime import MAX_ARGUMENT_BYTES, WorkflowRuntime, build_runtime
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.manifest.models import Manifest
from interlock._internal.policy.cedar_values import cedar_type
from interlock._internal.runs.history import (
    CALLED,
    HISTORY_CODES,
    SEQUENCE_FAILURE,
    VALUE_CODES,
    Prior,
    needs_history,
    value_ledger,
)
from interlock._internal.runs.replay import CAP_CODES, RUN_BRAKES, Basis, reconcile, rejudge
from interlock._internal.store import tables as t
from interlock._internal.store.encryption import text_opener
from interlock._internal.store.engine import reading
from interlock._internal.telemetry.redaction import MASK
from interlock.exceptions import ConfigError

# Below this many distinct decisions, starting worker processes costs more than it saves.
POOL_THRESHOLD = 20_000
_CHUNK = 1000
# Recorded refusals that came from the run's history: judged again from it, never held.
_REJUDGED = CAP_CODES | HISTORY_CODES | VALUE_CODES
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
# Stop-rule kinds judged from arguments by `check_intent`; the others read no argument.
_ARGLESS_STOPS = frozenset({"low_confidence", "conflicting_records", "sequence_failure"})

LABELS = {
    "allow->deny": "allowed → denied",
    "deny->allow": "denied → allowed",
    "allow->require_approval": "allowed → now needs approval",
    "deny->require_approval": "denied → now needs approval",
    "escalate->require_approval": "escalated → now needs approval",
    "require_approval->allow": "needed approval → allowed alone",
    "require_approval->deny": "needed approval → denied",
    "allow->escalate": "allowed → now escalates",
    "require_approval->escalate": "needed approval → now escalates",
    "deny->escalate": "denied → now escalates",
    "escalate->allow": "escalated → allowed",
    "escalate->deny": "escalated → denied",
}

ArgPath = tuple[str, ...]


def parse_since(text: str, *, now: float | None = None) -> float:
    """``7d``, ``24h``, ``90m``, ``2w``, ``3600s`` back from now, or an ISO date/time (UTC if naive)."""
    text = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if match:
        base = time.time() if now is None else now
        return base - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: use a duration such as 7d, 24h, 90m, or an ISO date", code="invalid_since"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ---- what a candidate can look at --------------------------------------------------------------


@dataclass(frozen=True)
class PolicyReads:
    """What Cedar policies read from the request context. ``args is None``: no bound."""

    args: frozenset[ArgPath] | None
    attributes: frozenset[str]


def cedar_reads(policy_text: str) -> PolicyReads:
    """The ``context`` paths a policy set reads, from its JSON AST; unbounded when unsure."""
    unbounded = PolicyReads(None, frozenset({"steps", "tool_calls", "confidence", "risk"}))
    try:
        est = json.loads(cedarpy.policies_to_json_str(policy_text))
    except (ValueError, TypeError, RuntimeError):
        return unbounded
    args: set[ArgPath] = set()
    attributes: set[str] = set()
    whole = False

    def chain(node: Any) -> ArgPath | None:
        if node == {"Var": "context"}:
            return ()
        if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("."), dict):
            base = chain(node["."].get("left"))
            attr = node["."].get("attr")
            return None if base is None or not isinstance(attr, str) else (*base, attr)
        return None

    def walk(node: Any) -> None:
        nonlocal whole
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        path = chain(node)
        if path is None and len(node) == 1 and isinstance(node.get("has"), dict):
            base = chain(node["has"].get("left"))
            attr = node["has"].get("attr")
            if base is not None and isinstance(attr, str):
                path = (*base, attr)
        if path is not None:
            if len(path) == 0 or (path[0] == "args" and len(path) == 1):
                whole = True  # the context or all arguments as one value: no bound
            elif path[0] == "args":
                args.add(path[1:])
            else:
                attributes.add(path[0])
            return
        for value in node.values():
            walk(value)

    walk(est)
    return unbounded if whole else PolicyReads(frozenset(args), frozenset(attributes))


@dataclass(frozen=True)
class _Keyer:
    """How to key one tool's arguments: by the paths the candidate reads, or exactly (``None``)."""

    validator: Any
    paths: tuple[ArgPath, ...] | None


def _keyers(runtime: WorkflowRuntime, reads: PolicyReads) -> dict[str, _Keyer]:
    keyers = {}
    for name, tool in runtime.tools.items():
        paths: set[ArgPath] | None = None if reads.args is None else set(reads.args)
        for condition, _traits in tool.risk_conditions:
            if paths is not None:
                paths.update(tuple(p.split(".")) for p in condition.paths)
        for rule in runtime.manifest.stop_rules:
            if paths is None or (rule.tool_list() and name not in rule.tool_list()):
                continue
            if rule.kind == "missing_data":
                paths.update(tuple(p.split(".")) for p in rule.required)
            elif rule.kind == "outside_category" and rule.field:
                paths.add(tuple(rule.field.split(".")))
            elif rule.kind == "sensitive_category" and not (rule.pattern or rule.categories):
                pass  # judged from the risk traits alone, which the risk-condition paths decide
            elif rule.kind not in _ARGLESS_STOPS:
                paths = None  # scans all argument text (or a kind this analysis does not know)
        if paths is not None:
            paths |= _numeric_paths(tool.spec.input_schema)
        keyers[name] = _Keyer(tool.validator, None if paths is None else tuple(sorted(paths)))
    return keyers


def _numeric_paths(schema: dict[str, Any], prefix: ArgPath = ()) -> set[ArgPath]:
    """Where the schema types a number for Cedar: the only values whose conversion can fail."""
    out: set[ArgPath] = set()
    for name, sub in (schema.get("properties") or {}).items():
        typ = cedar_type(sub) if isinstance(sub, dict) else None
        if typ is None:
            continue  # left out of the Cedar context altogether
        path = (*prefix, name)
        if typ["type"] == "Record":
            out |= _numeric_paths(sub, path)
        elif _holds_number(typ):
            out.add(path)
    return out


def _holds_number(typ: dict[str, Any]) -> bool:
    kind = typ.get("type")
    if kind in ("Long", "Extension"):
        return True
    if kind == "Set":
        return _holds_number(typ.get("element") or {})
    if kind == "Record":
        return any(_holds_number(a) for a in (typ.get("attributes") or {}).values())
    return False


_SCALARS = (str, int, float, bool, type(None))


def _project(args: dict[str, Any], paths: tuple[ArgPath, ...]) -> tuple[Any, ...]:
    """What the candidate can see of valid arguments at the paths it reads."""
    seen: list[Any] = []
    for path in paths:
        value: Any = args
        for depth, segment in enumerate(path):
            if not isinstance(value, dict):
                # Reading through a non-object: the outcome depends on what stands there.
                value = ("stop", depth, json.dumps(value, sort_keys=True))
                break
            if segment not in value:
                value = ("absent", depth)
                break
            value = value[segment]
        else:
            # The type goes with the value: True == 1 in Python, not in policy.
            value = (type(value), value) if isinstance(value, _SCALARS) else json.dumps(value, sort_keys=True)
        seen.append(value)
    return tuple(seen)


def _exact(raw: str | None, args_hash: str | None) -> bool:
    """The stored arguments are the ones hashed unless redaction changed them. Stored text is
    usually the canonical form itself (one sha256); otherwise it is parsed and hashed canonically."""
    text = "null" if raw is None else raw  # JSON null is stored as SQL NULL
    if args_hash is not None:
        if hashlib.sha256(text.encode("utf-8")).hexdigest() == args_hash:
            return True
        try:
            return hash_value(json.loads(text)) == args_hash
        except ValueError:
            return False
    return MASK[:-1] not in text and "***@" not in text


# ---- judging -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """The candidate's answer for one distinct decision (small and picklable)."""

    decision: str
    reasons: tuple[dict[str, Any], ...]

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(str(r.get("code")) for r in self.reasons)


def judge(
    runtime: WorkflowRuntime,
    *,
    agent_id: str,
    environment: str,
    tool: str,
    arguments: Any,
    confidence: float | None,
    steps: int = 0,
) -> Judgement:
    verdict = evaluate(
        runtime,
        agent_id=agent_id,
        environment=environment,
        intent=Intent(tool=tool, arguments=arguments, confidence=confidence),
        steps=steps,
        tool_calls=steps,
    )
    return Judgement(
        decision=verdict.decision.decision,
        reasons=tuple(r.model_dump(exclude_none=True) for r in verdict.decision.reasons),
    )


# (key index, agent, environment, tool, arguments as stored JSON text, confidence, steps)
_Item = tuple[int, str, str, str, str | None, float | None, int]

_worker_runtime: WorkflowRuntime | None = None


def _init_worker(text: str, file: str, base_dir: str) -> None:
    global _worker_runtime
    _worker_runtime = build_runtime(load_manifest_text(text, file=file, base_dir=Path(base_dir)))


def _judge_items(items: list[_Item], runtime: WorkflowRuntime | None = None) -> list[tuple[int, Judgement]]:
    rt = runtime if runtime is not None else _worker_runtime
    assert rt is not None, "worker was not initialised"
    out = []
    for index, agent, env, tool, raw, confidence, steps in items:
        arguments = None if raw is None else json.loads(raw)
        verdict = judge(
            rt,
            agent_id=agent,
            environment=env,
            tool=tool,
            arguments=arguments,
            confidence=confidence,
            steps=steps,
        )
        out.append((index, verdict))
    return out


class _Judge:
    """Judges distinct decisions in this process, or in a pool once there are many of them."""

    def __init__(self, candidate: LoadedManifest, runtime: WorkflowRuntime, workers: int) -> None:
        self._candidate = candidate
        self._runtime = runtime
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future[list[tuple[int, Judgement]]]] = []
        self._seen = 0
        self.results: dict[int, Judgement] = {}

    def submit(self, items: list[_Item]) -> None:
        self._seen += len(items)
        if self._pool is None and self._workers > 1 and self._seen > POOL_THRESHOLD:
            candidate = self._candidate
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                # spawn, not fork: the parent holds database connections and maybe threads.
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(candidate.text, str(candidate.path or "<candidate>"), str(candidate.base_dir)),
            )
        if self._pool is None:
            self.results.update(_judge_items(items, self._runtime))
        else:
            self._futures.append(self._pool.submit(_judge_items, items))

    def finish(self) -> dict[int, Judgement]:
        try:
            for future in self._futures:
                self.results.update(future.result())
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        return self.results


# ---- the report ----------------------------------------------------------------------------------


@dataclass
class WhatIfReport:
    workflow: str
    candidate_version: str
    policy_version: str
    since: float | None
    until: float | None
    total: int = 0
    distinct: int = 0
    held: int = 0
    not_comparable: int = 0
    unchanged: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def changed(self) -> int:
        return sum(self.transitions.values())

    @property
    def change_rate(self) -> float:
        """Changed decisions over every recorded decision in the window."""
        return self.changed / self.total if self.total else 0.0

    def exceeds(self, *, max_changes: int | None = None, max_change_rate: float | None = None) -> bool:
        if max_changes is not None and self.changed > max_changes:
            return True
        return max_change_rate is not None and self.change_rate > max_change_rate

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "candidate_version": self.candidate_version,
            "policy_version": self.policy_version,
            "since": self.since,
            "until": self.until,
            "total": self.total,
            "distinct": self.distinct,
            "unchanged": self.unchanged,
            "held": self.held,
            "not_comparable": self.not_comparable,
            "changed": self.changed,
            "change_rate": self.change_rate,
            "transitions": dict(sorted(self.transitions.items())),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
            "elapsed_s": round(self.elapsed_s, 3),
        }


def _codes(raw_reasons: str) -> tuple[str, ...]:
    return tuple(str(r.get("code")) for r in json.loads(raw_reasons))


def what_if(
    engine: Engine,
    candidate: LoadedManifest,
    *,
    since: float | None = None,
    until: float | None = None,
    batch_size: int = 5000,
    workers: int | None = None,
    examples: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> WhatIfReport:
    """Judge every recorded decision of the candidate's workflow in [since, until) by the candidate.

    Worker processes are started with ``spawn``: a script calling this must guard its entry
    point with ``if __name__ == "__main__":`` (or pass ``workers=1``).
    """
    started = time.perf_counter()
    runtime = build_runtime(candidate)
    workflow = candidate.manifest.name
    report = WhatIfReport(
        workflow=workflow,
        candidate_version=candidate.version_id,
        policy_version=runtime.compiled.sha256,
        since=since,
        until=until,
    )
    reads = cedar_reads(runtime.compiled.text)
    counters = bool({"steps", "tool_calls"} & reads.attributes)
    keyers = _keyers(runtime, reads)
    judges = _Judge(candidate, runtime, workers if workers is not None else (os.cpu_count() or 1))
    # Rules that read the run's history are judged from it in a second pass, run by run: every
    # action the candidate could refuse that way, and every recorded refusal that came from it.
    rejudge_all = _rejudges_all(candidate.manifest)
    deferred = 0
    keys: dict[tuple[Any, ...], int] = {}
    # (key index, recorded decision, recorded reasons, arguments exact) → [rows, first row id]
    tally: dict[tuple[int, str, str, bool], list[Any]] = {}
    later: dict[tuple[int, str, str, bool], list[Any]] = {}
    codes_of: dict[str, tuple[str, ...]] = {}
    pending: list[_Item] = []
    try:
        total = _count(engine, workflow, since, until)
        for row in _rows(engine, workflow, since, until, batch_size=batch_size, counters=counters):
            row_id, agent, env, tool, recorded, raw_reasons, args_hash, raw_args, confidence, seq, step = row
            report.total += 1
            if progress is not None and report.total % batch_size == 0:
                progress(report.total, total)
            codes = codes_of.get(raw_reasons)
            if codes is None:
                codes = codes_of[raw_reasons] = _codes(raw_reasons)
            if RUN_BRAKES.intersection(codes) or agent is None or env is None or tool is None:
                # A brake denied it; it denies again whatever the candidate says, so skip the work.
                report.held += 1
                continue
            steps = max(int(seq) - 1, 0) if counters and seq is not None else 0
            key = (agent, env, tool, confidence, steps, _bound(keyers.get(tool), raw_args, args_hash))
            index = keys.get(key)
            if index is None:
                index = keys[key] = len(keys)
                pending.append((index, agent, env, tool, raw_args, confidence, steps))
                if len(pending) >= _CHUNK:
                    judges.submit(pending)
                    pending = []
            slot_key = (index, recorded, raw_reasons, _exact(raw_args, args_hash))
            if step is not None and (rejudge_all or _REJUDGED.intersection(codes)):
                deferred += 1
                slot = later.get(slot_key)  # judged with its run's history below, if its step is there
                if slot is None:
                    later[slot_key] = [1, row_id]
                else:
                    slot[0] += 1
                continue
            slot = tally.get(slot_key)
            if slot is None:
                tally[slot_key] = [1, row_id]
            else:
                slot[0] += 1
        if pending:
            judges.submit(pending)
        results = judges.finish()
    finally:
        runtime.close()
    report.distinct = len(keys)
    wanted: dict[str, list[tuple[str, Judgement]]] = {}

    def judged_alone(groups: dict[tuple[int, str, str, bool], list[Any]]) -> None:
        for (index, recorded, raw_reasons, exact), (count, first_id) in groups.items():
            if not count:
                continue
            verdict = results[index]
            codes = codes_of[raw_reasons]
            now, basis = reconcile(recorded, codes, verdict.decision)
            _settle(report, wanted, examples, recorded, codes, now, basis, exact, count, first_id, verdict)

    judged_alone(tally)
    if deferred:
        for item in _with_history(
            engine,
            candidate,
            since,
            until,
            keys=keys,
            keyers=keyers,
            results=results,
            counters=counters,
            batch_size=batch_size,
        ):
            row_id, slot_key, recorded, codes, now, basis, decided = item
            slot = later.get(slot_key)
            if slot is None or slot[0] == 0:
                continue
            slot[0] -= 1
            verdict = results[slot_key[0]]
            if decided is not None:
                verdict = Judgement(decision=now, reasons=(decided.model_dump(exclude_none=True),))
            _settle(report, wanted, examples, recorded, codes, now, basis, slot_key[3], 1, row_id, verdict)
    # Decisions whose steps are not stored (a decision recorded without one) are judged alone.
    judged_alone(later)
    report.examples = _examples(engine, wanted)
    if progress is not None:
        progress(report.total, report.total)
    report.elapsed_s = time.perf_counter() - started
    return report


def _settle(
    report: WhatIfReport,
    wanted: dict[str, list[tuple[str, Judgement]]],
    examples: int,
    recorded: str,
    codes: tuple[str, ...],
    now: str,
    basis: str,
    exact: bool,
    count: int,
    first_id: str,
    verdict: Judgement,
) -> None:
    """Count ``count`` recorded decisions whose candidate decision is ``now``."""
    if now == recorded:
        if basis in ("brake", "held"):
            report.held += count
        else:
            report.unchanged += count
        return
    if not exact and "invalid_arguments" in (*codes, *verdict.codes):
        report.not_comparable += count
        return
    label = f"{recorded}->{now}"
    report.transitions[label] = report.transitions.get(label, 0) + count
    picked = wanted.setdefault(label, [])
    if len(picked) < examples:
        picked.append((first_id, verdict))


def _with_history(
    engine: Engine,
    candidate: LoadedManifest,
    since: float | None,
    until: float | None,
    *,
    keys: dict[tuple[Any, ...], int],
    keyers: dict[str, _Keyer],
    results: dict[int, Judgement],
    counters: bool,
    batch_size: int,
) -> Iterator[tuple[str, tuple[int, str, str, bool], str, tuple[str, ...], str, Basis, Reason | None]]:
    """The second pass: the steps of every run with a decision in the window, run by run in
    order, so the rules that read a run's history are judged from its earlier steps. Yields, for
    each decision the first pass may have deferred: its id, its first-pass tally key, its
    recorded decision and codes (a failed call that broke a declared sequence counts as
    ``escalate``), and the candidate's decision, basis and deciding history reason."""
    manifest = candidate.manifest
    rejudge_all = _rejudges_all(manifest)
    # Value limits over time count what the workflow moved before each action, across its runs.
    ledger = value_ledger(engine, manifest, since=since, until=until)
    decode = any(rule.kind == "conflicting_records" for rule in manifest.stop_rules)
    s, d, h = t.steps, t.decisions, t.handoffs
    workflow = manifest.name
    runs_in_window = _window(select(d.c.run_id), workflow, since, until).where(d.c.step_id.is_not(None))
    query = (
        select(
            s.c.run_id,
            s.c.seq,
            s.c.kind,
            s.c.tool,
            s.c.args_hash,
            s.c.status,
            type_coerce(s.c.result, Text) if decode else null(),
            d.c.id,
            d.c.agent_id,
            d.c.environment,
            d.c.tool,
            d.c.decision,
            type_coerce(d.c.reasons, Text),
            d.c.args_hash,
            type_coerce(d.c.arguments, Text),
            d.c.confidence,
            d.c.created_at,
            d.c.workflow,
            d.c.step_id,
            h.c.reason_code,
        )
        .select_from(
            s.outerjoin(d, d.c.id == s.c.decision_id).outerjoin(
                h, and_(h.c.step_id == s.c.id, h.c.reason_code == SEQUENCE_FAILURE)
            )
        )
        .where(s.c.run_id.in_(runs_in_window.scalar_subquery()))
        .order_by(s.c.run_id, s.c.seq)
    )
    current: str | None = None
    history: list[Prior] = []
    calls = 0
    # Payloads may be encrypted at rest: their raw text is opened here, as in the first pass.
    open_args = text_opener(engine, "decisions.arguments")
    open_result = text_opener(engine, "steps.result")
    with reading(engine) as conn:
        result = conn.execution_options(yield_per=batch_size).execute(query)
        for partition in result.partitions():
            for row in partition:
                run_id, seq, kind, s_tool, s_hash, status, raw_result = row[:7]
                d_id, agent, env, tool, recorded, raw_reasons, args_hash, raw_args = row[7:15]
                confidence, created_at, d_workflow, d_step, broke = row[15:]
                raw_args = open_args(raw_args)
                if run_id != current:
                    current, history, calls = run_id, [], 0
                in_window = (
                    d_step is not None
                    and d_workflow == workflow
                    and (since is None or created_at >= since)
                    and (until is None or created_at < until)
                )
                if in_window and agent is not None and env is not None and tool is not None:
                    codes = _codes(raw_reasons)
                    if not RUN_BRAKES.intersection(codes) and (rejudge_all or _REJUDGED.intersection(codes)):
                        steps = max(int(seq) - 1, 0) if counters else 0
                        key = (
                            agent,
                            env,
                            tool,
                            confidence,
                            steps,
                            _bound(keyers.get(tool), raw_args, args_hash),
                        )
                        index = keys.get(key)
                        if index is None:
                            continue  # not seen by the first pass: counted as held there
                        now, basis, decided = rejudge(
                            manifest,
                            recorded=recorded,
                            codes=codes,
                            policy_now=results[index].decision,
                            tool=tool,
                            args_hash=args_hash,
                            status=status,
                            history=history,
                            steps_before=int(seq) - 1,
                            calls_before=calls,
                            values=None
                            if raw_args is None
                            else partial(
                                ledger.refusal,
                                tool,
                                json.loads(raw_args),
                                agent_id=agent,
                                run_id=run_id,
                                at=float(created_at),
                            ),
                        )
                        slot_key = (index, recorded, raw_reasons, _exact(raw_args, args_hash))
                        if broke is not None:  # the run was escalated at this step
                            recorded, codes = "escalate", (*codes, str(broke))
                        yield d_id, slot_key, recorded, codes, now, basis, decided
                if kind == "tool":
                    opened = open_result(raw_result) if decode else None
                    value = json.loads(opened) if opened is not None else None
                    history.append(Prior(tool=s_tool, args_hash=s_hash, status=str(status), result=value))
                if status in CALLED:
                    calls += 1


def _rejudges_all(manifest: Manifest) -> bool:
    """Whether every action must be judged with history under ``manifest``: its rules read the
    run's earlier steps, it caps steps or calls, or it limits values over time."""
    budget = manifest.budgets.per_run
    return (
        needs_history(manifest)
        or (budget.max_steps, budget.max_tool_calls) != (None, None)
        or bool(manifest.budgets.value_limits)
    )


def _bound(keyer: _Keyer | None, raw: str | None, args_hash: str | None) -> tuple[Any, ...]:
    """The part of a key that stands for the arguments."""
    if keyer is None:
        return ("unknown tool",)  # denied before anything looks at the arguments
    if keyer.paths is not None and raw is not None and len(raw) * 4 <= MAX_ARGUMENT_BYTES:
        args = json.loads(raw)
        if isinstance(args, dict) and keyer.validator.is_valid(args):
            return ("seen", _project(args, keyer.paths))
    if args_hash is not None:
        return ("hash", args_hash)
    return ("text", raw)


def _window(query: Any, workflow: str, since: float | None, until: float | None) -> Any:
    d = t.decisions
    query = query.where(d.c.workflow == workflow)
    if since is not None:
        query = query.where(d.c.created_at >= since)
    if until is not None:
        query = query.where(d.c.created_at < until)
    return query


def _count(engine: Engine, workflow: str, since: float | None, until: float | None) -> int:
    with reading(engine) as conn:
        return int(
            conn.execute(
                _window(select(func.count()).select_from(t.decisions), workflow, since, until)
            ).scalar_one()
        )


def _rows(
    engine: Engine,
    workflow: str,
    since: float | None,
    until: float | None,
    *,
    batch_size: int,
    counters: bool,
) -> Iterator[tuple[Any, ...]]:
    d = t.decisions
    # JSON columns come back as their stored text: arguments are decoded only for distinct decisions,
    # and the reasons text doubles as a cache key for telling policy decisions from brakes.
    columns = [
        d.c.id,
        d.c.agent_id,
        d.c.environment,
        d.c.tool,
        d.c.decision,
        type_coerce(d.c.reasons, Text),
        d.c.args_hash,
        type_coerce(d.c.arguments, Text),
        d.c.confidence,
    ]
    if counters:
        query = select(*columns, t.steps.c.seq, d.c.step_id).select_from(
            d.outerjoin(t.steps, t.steps.c.id == d.c.step_id)
        )
    else:
        query = select(*columns, null(), d.c.step_id)
    query = _window(query, workflow, since, until).order_by(d.c.created_at, d.c.id)
    # The arguments' raw text may be encrypted at rest: opened here, the rest reads plain JSON.
    opened = text_opener(engine, "decisions.arguments")
    with reading(engine) as conn:
        result = conn.execution_options(yield_per=batch_size).execute(query)
        for partition in result.partitions():
            yield from ((*row[:7], opened(row[7]), *row[8:]) for row in partition)


def _examples(
    engine: Engine, wanted: dict[str, list[tuple[str, Judgement]]]
) -> dict[str, list[dict[str, Any]]]:
    ids = [row_id for picked in wanted.values() for row_id, _ in picked]
    if not ids:
        return {}
    d = t.decisions
    with reading(engine) as conn:
        rows = {
            r["id"]: r
            for r in conn.execute(
                select(
                    d.c.id,
                    d.c.tool,
                    d.c.agent_id,
                    d.c.environment,
                    d.c.arguments,
                    d.c.reasons,
                    d.c.created_at,
                ).where(d.c.id.in_(ids))
            ).mappings()
        }
    out: dict[str, list[dict[str, Any]]] = {}
    for label, picked in wanted.items():
        for row_id, verdict in picked:
            row = rows[row_id]
            out.setdefault(label, []).append(
                {
                    "decision_id": row_id,
                    "tool": row["tool"],
                    "agent_id": row["agent_id"],
                    "environment": row["environment"],
                    "arguments": row["arguments"],
                    "recorded_at": row["created_at"],
                    "old_reasons": [
                        {
                            k: v
                            for k, v in r.items()
                            if k in ("code", "policy_id", "message") and v is not None
                        }
                        for r in row["reasons"]
                    ],
                    "new_reasons": list(verdict.reasons),
                }
            )
    return out


__all__ = ["LABELS", "Judgement", "WhatIfReport", "judge", "parse_since", "what_if"]
