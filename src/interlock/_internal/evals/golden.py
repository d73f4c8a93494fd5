"""Golden sets: scenarios with the decisions they must get, and checks on the final state.

A golden set is YAML (a list of scenarios, or a mapping with ``scenarios`` and options) or JSONL
(one scenario per line; a line ``{"setup": {...}}`` or ``{"agent": "..."}`` sets an option)::

    setup:
      fresh_files: [SUPPORT_DESK_DB]      # env vars pointed at a new file for every scenario
      reset: support_desk:reset           # called before every scenario
      state: support_desk:snapshot        # returns the state that `path` checks read
    scenarios:
      - id: small-refund
        category: refunds
        description: A 30 USD refund runs without a person.
        agent: triage-bot                 # default: `agent` above, else the manifest's first agent
        steps:
          - tool: payments.refund
            arguments: {ticket_id: T-1001, amount: 30, currency: USD, reason: late}
            expect: {decision: allow, status: executed, policy: allow:small-refunds}
        expect_final_state:
          - {path: refunds.*.amount, sum: 30}
          - {path: tickets.T-1001.priority, equals: normal}
          - {call: support_desk:refunds_total, equals: 30}

State checks: ``path`` walks the state with dots (``*`` takes every item of a list or mapping
and makes the result a list; a number indexes a list); ``call`` calls a zero-argument function
from the workflow's folder. Each check states one or more of ``equals``, ``not_equals``,
``count``, ``sum``, ``at_least``, ``at_most``, ``contains`` and ``exists``; all must hold.
Numbers compare with a tolerance of 1e-9, so 0.1 + 0.2 equals 0.3.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from interlock.exceptions import ConfigError

DecisionKind = Literal["allow", "deny", "require_approval", "escalate"]
_CALLABLE = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
_OPS = ("equals", "not_equals", "count", "sum", "at_least", "at_most", "contains", "exists")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    """What one action must get. Only the keys given are checked."""

    decision: DecisionKind
    reason: str | None = Field(default=None, description="a reason code among the decision's reasons")
    status: str | None = Field(default=None, description="the action's status: executed, denied, invalid, …")
    policy: str | None = Field(default=None, description="a policy id among the decision's policy ids")
    risk: list[str] = Field(default_factory=list, description="traits the decision's risk must include")


class GoldenStep(_Strict):
    tool: str
    arguments: Any = Field(default_factory=dict)
    confidence: float | None = None
    reasoning: str | None = None
    repeat: int = Field(default=1, ge=1, le=1000)
    expect: Expect


class StateCheck(_Strict):
    path: str | None = Field(default=None, min_length=1)
    call: str | None = Field(default=None, pattern=_CALLABLE)
    equals: Any = None
    not_equals: Any = None
    count: int | None = Field(default=None, ge=0)
    sum: float | None = None
    at_least: float | None = None
    at_most: float | None = None
    contains: Any = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _one_source_some_ops(self) -> StateCheck:
        if (self.path is None) == (self.call is None):
            raise ValueError("a state check needs exactly one of 'path' or 'call'")
        if not self.ops:
            raise ValueError(f"a state check needs at least one of {', '.join(_OPS)}")
        return self

    @property
    def ops(self) -> list[str]:
        # `equals: null` is a real expectation, so what counts is which keys were written.
        return [op for op in _OPS if op in self.model_fields_set]

    @property
    def subject(self) -> str:
        return self.path if self.path is not None else f"{self.call}()"


class Setup(_Strict):
    fresh_files: list[str] = Field(default_factory=list)
    reset: str | None = Field(default=None, pattern=_CALLABLE)
    state: str | None = Field(default=None, pattern=_CALLABLE)


class Scenario(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")
    category: str = Field(min_length=1, max_length=60)
    description: str = ""
    agent: str | None = None
    environment: str | None = None
    token: Literal["valid", "revoked", "invalid"] = "valid"
    steps: list[GoldenStep] = Field(min_length=1)
    expect_final_state: list[StateCheck] = Field(default_factory=list)


class GoldenSet(_Strict):
    agent: str | None = None
    setup: Setup = Setup()
    scenarios: list[Scenario] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> GoldenSet:
        seen: set[str] = set()
        for scenario in self.scenarios:
            if scenario.id in seen:
                raise ValueError(f"scenario id {scenario.id!r} is used twice")
            seen.add(scenario.id)
        return self


def load_golden(path: Path) -> GoldenSet:
    """Read and check a golden set (YAML or JSONL); problems name the file and the scenario."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read golden set: {exc.strerror}", code="golden_unreadable"
        ) from exc
    if path.suffix == ".jsonl":
        data: Any = _jsonl(path, text)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}", code="golden_invalid") from exc
    if isinstance(data, list):
        data = {"scenarios": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a golden set is a list of scenarios or a mapping", code="golden_invalid")
    try:
        return GoldenSet.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, data)}", code="golden_invalid") from exc


def _jsonl(path: Path, text: str) -> dict[str, Any]:
    data: dict[str, Any] = {"scenarios": []}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: not JSON: {exc}", code="golden_invalid") from exc
        if isinstance(item, dict) and "id" not in item and set(item) <= {"setup", "agent"}:
            data.update(item)
        else:
            data["scenarios"].append(item)
    return data


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    error = exc.errors()[0]
    loc = list(error["loc"])
    where = ".".join(str(p) for p in loc)
    if len(loc) >= 2 and loc[0] == "scenarios" and isinstance(loc[1], int):
        try:
            ident = data["scenarios"][loc[1]].get("id")
        except (AttributeError, IndexError, KeyError, TypeError):
            ident = None
        if ident:
            where = f"scenario {ident!r}: " + ".".join(str(p) for p in loc[2:])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


# ---- the check language -------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def resolve_path(data: Any, path: str) -> Any:
    """The value at a dotted path; a ``*`` segment maps over items. ``MISSING`` when absent."""
    values = [data]
    spread = False
    for segment in path.split("."):
        nxt: list[Any] = []
        for value in values:
            if segment == "*":
                if isinstance(value, dict):
                    nxt.extend(value.values())
                elif isinstance(value, list):
                    nxt.extend(value)
            elif isinstance(value, dict) and segment in value:
                nxt.append(value[segment])
            elif (
                isinstance(value, list)
                and segment.lstrip("-").isdigit()
                and -len(value) <= int(segment) < len(value)
            ):
                nxt.append(value[int(segment)])
        spread = spread or segment == "*"
        values = nxt
    if spread:
        return values
    return values[0] if values else MISSING


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


@dataclass(frozen=True)
class CheckResult:
    subject: str
    ok: bool
    expected: str
    actual: Any

    def as_dict(self) -> dict[str, Any]:
        actual = None if self.actual is MISSING else self.actual
        return {"subject": self.subject, "ok": self.ok, "expected": self.expected, "actual": actual}


def run_check(check: StateCheck, value: Any) -> CheckResult:
    """Apply every operation of ``check`` to ``value`` (already resolved or called)."""
    failures = []
    for op in check.ops:
        want = getattr(check, op)
        if not _holds(op, want, value):
            failures.append(f"{op} {json.dumps(want, ensure_ascii=False, default=str)}")
    expected = ", ".join(
        f"{op} {json.dumps(getattr(check, op), ensure_ascii=False, default=str)}" for op in check.ops
    )
    return CheckResult(check.subject, not failures, expected, value)


def _holds(op: str, want: Any, value: Any) -> bool:
    if op == "exists":
        return (value is not MISSING) == bool(want)
    if value is MISSING:
        return False
    if op == "equals":
        return _same(value, want)
    if op == "not_equals":
        return not _same(value, want)
    if op == "count":
        return isinstance(value, list | dict | str) and len(value) == want
    if op == "contains":
        if isinstance(value, list):
            return any(_same(item, want) for item in value)
        return isinstance(value, str | dict) and isinstance(want, str) and want in value
    if op == "sum":
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            return False
        return math.isclose(math.fsum(value), want, rel_tol=0, abs_tol=1e-9)
    if not _is_number(value):
        return False
    return bool(value >= want - 1e-9) if op == "at_least" else bool(value <= want + 1e-9)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "MISSING",
    "CheckResult",
    "Expect",
    "GoldenSet",
    "GoldenStep",
    "Scenario",
    "Setup",
    "StateCheck",
    "load_golden",
    "resolve_path",
    "run_check",
]
