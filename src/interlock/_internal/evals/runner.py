"""The evaluation gate: every golden scenario through the real pipeline, in isolation.

Each scenario gets a fresh SQLite database (a copy of one migrated template, so isolation costs a
file copy rather than a migration), its own agent identity and token, and one run; its steps go
through :meth:`Interlock.act` exactly as an agent's would, tools included. The tools' own system
is reset between scenarios by the golden set's ``setup``: environment variables pointed at new
files, and a ``reset`` hook. Without a setup, scenarios share whatever state the tools keep.

Requests Interlock refuses before deciding (a revoked or malformed token) have no decision; the
runner reports them as ``deny`` with status ``rejected`` and the error's code as the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlock._internal.evals.golden import (
    CheckResult,
    Expect,
    GoldenSet,
    GoldenStep,
    Scenario,
    resolve_path,
    run_check,
)
from interlock._internal.gateway.transports.python import PythonTransport
from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.service import Interlock
from interlock._internal.settings import Settings
from interlock.exceptions import ConfigError, InterlockError

_ACTOR = "eval"


@dataclass(frozen=True)
class StepOutcome:
    step: int
    attempt: int
    tool: str
    expected: dict[str, Any]
    actual: dict[str, Any]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "attempt": self.attempt,
            "tool": self.tool,
            "ok": self.ok,
            "expected": self.expected,
            "actual": self.actual,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class ScenarioResult:
    id: str
    category: str
    description: str
    steps: list[StepOutcome]
    checks: list[CheckResult]
    error: str | None = None
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(s.ok for s in self.steps) and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "description": self.description,
            "passed": self.passed,
            "error": self.error,
            # Passing attempts are summarised; a 30-step cap scenario would drown the failures.
            "steps_checked": len(self.steps),
            "failed_steps": [s.as_dict() for s in self.steps if not s.ok],
            "checks": [c.as_dict() for c in self.checks],
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class EvalReport:
    workflow: str
    manifest_version: str
    golden: str
    threshold: float
    results: list[ScenarioResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.pass_rate >= self.threshold

    def by_category(self) -> dict[str, tuple[int, int]]:
        """category → (passed, total), in order of first appearance."""
        out: dict[str, tuple[int, int]] = {}
        for result in self.results:
            passed, total = out.get(result.category, (0, 0))
            out[result.category] = (passed + result.passed, total + 1)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow,
            "manifest_version": self.manifest_version,
            "golden": self.golden,
            "threshold": self.threshold,
            "passed": self.passed,
            "total": self.total,
            "pass_rate": self.pass_rate,
            "ok": self.ok,
            "categories": {k: {"passed": p, "total": n} for k, (p, n) in self.by_category().items()},
            "scenarios": [r.as_dict() for r in self.results],
        }


def golden_path(loaded: LoadedManifest) -> Path:
    """The golden set a manifest names in ``evaluation.golden_set``, relative to its folder."""
    evaluation = loaded.manifest.evaluation
    if evaluation is None:
        raise ConfigError(
            f"{loaded.manifest.name} has no evaluation.golden_set; pass a golden file", code="no_golden_set"
        )
    return loaded.base_dir / evaluation.golden_set


def run_golden(
    loaded: LoadedManifest,
    golden: GoldenSet,
    *,
    golden_name: str = "<golden>",
    threshold: float | None = None,
    progress: Callable[[ScenarioResult], None] | None = None,
) -> EvalReport:
    """Run every scenario; the report's ``ok`` says whether the pass rate meets the threshold."""
    manifest = loaded.manifest
    if threshold is None:
        threshold = manifest.evaluation.threshold if manifest.evaluation is not None else 1.0
    report = EvalReport(
        workflow=manifest.name, manifest_version=loaded.version_id, golden=golden_name, threshold=threshold
    )
    hooks = PythonTransport(base_dir=loaded.base_dir)
    with tempfile.TemporaryDirectory(prefix="interlock-eval-") as tmp, _saved_env(golden.setup.fresh_files):
        workdir = Path(tmp)
        template = workdir / "template.db"
        with Interlock(Settings(database={"url": f"sqlite:///{template}"})) as il:
            il.migrate()
        for number, scenario in enumerate(golden.scenarios):
            folder = workdir / f"scenario-{number:04d}"
            folder.mkdir()
            result = _run_scenario(loaded, golden, scenario, folder=folder, template=template, hooks=hooks)
            report.results.append(result)
            if progress is not None:
                progress(result)
    return report


@contextmanager
def _saved_env(names: list[str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_scenario(
    loaded: LoadedManifest,
    golden: GoldenSet,
    scenario: Scenario,
    *,
    folder: Path,
    template: Path,
    hooks: PythonTransport,
) -> ScenarioResult:
    started = time.perf_counter()
    steps: list[StepOutcome] = []
    checks: list[CheckResult] = []
    error: str | None = None
    database = folder / "interlock.db"
    shutil.copyfile(template, database)
    for name in golden.setup.fresh_files:
        os.environ[name] = str(folder / f"{name.lower()}.db")
    try:
        if golden.setup.reset:
            hooks.resolve(golden.setup.reset)[0]()
        with Interlock(Settings(database={"url": f"sqlite:///{database}"})) as il:
            il.load_workflow(loaded, actor=_ACTOR)
            token = _token(il, loaded, golden, scenario)
            run_id: str | None = None
            refused: InterlockError | None = None
            try:
                run_id = il.start_run(token, trigger={"golden": scenario.id}, started_by=_ACTOR).id
            except InterlockError as exc:
                refused = exc
            for index, step in enumerate(scenario.steps):
                for attempt in range(step.repeat):
                    actual = _act(il, token, run_id, step, refused)
                    steps.append(
                        StepOutcome(
                            step=index,
                            attempt=attempt,
                            tool=step.tool,
                            expected=step.expect.model_dump(exclude_defaults=True),
                            actual=actual,
                            problems=_compare(step.expect, actual),
                        )
                    )
        checks = _check_state(golden, scenario, hooks)
    except Exception as exc:  # a broken scenario or hook fails that scenario, not the whole gate
        error = f"{type(exc).__name__}: {exc}"
    return ScenarioResult(
        id=scenario.id,
        category=scenario.category,
        description=scenario.description,
        steps=steps,
        checks=checks,
        error=error,
        duration_s=time.perf_counter() - started,
    )


def _token(il: Interlock, loaded: LoadedManifest, golden: GoldenSet, scenario: Scenario) -> str:
    manifest = loaded.manifest
    agent = scenario.agent or golden.agent or (manifest.agents[0].id if manifest.agents else "agent")
    declared = manifest.agent(agent)
    environment = scenario.environment or (declared.environment if declared else manifest.environments[0])
    creds = il.agents.create(agent, workflow=manifest.name, environment=environment, actor=_ACTOR)
    token = il.issue_token(creds.client_id, creds.client_secret).token
    if scenario.token == "revoked":
        il.agents.revoke(agent, actor=_ACTOR, reason="golden scenario: revoked token")
    elif scenario.token == "invalid":
        token = "not-a-token." + token[-12:]
    return token


def _act(
    il: Interlock, token: str, run_id: str | None, step: GoldenStep, refused: InterlockError | None
) -> dict[str, Any]:
    try:
        if refused is not None:
            raise refused
        assert run_id is not None
        result = il.act(
            token, run_id, step.tool, step.arguments, confidence=step.confidence, reasoning=step.reasoning
        )
    except InterlockError as exc:
        return {
            "decision": "deny",
            "status": "rejected",
            "reasons": [exc.code],
            "policy_ids": [],
            "risk": [],
            "error": str(exc),
        }
    decision = result.decision
    return {
        "decision": decision.decision,
        "status": result.status,
        "reasons": decision.reason_codes,
        # Cedar's policy ids and those named by reasons (stop rules, approvals): any of them decided.
        "policy_ids": sorted({*decision.policy_ids, *(r.policy_id for r in decision.reasons if r.policy_id)}),
        "risk": list(decision.risk),
        "error": result.error,
    }


def _compare(expect: Expect, actual: dict[str, Any]) -> list[str]:
    problems = []
    if actual["decision"] != expect.decision:
        problems.append(f"decision: expected {expect.decision}, got {actual['decision']}")
    if expect.reason is not None and expect.reason not in actual["reasons"]:
        problems.append(f"reason: expected {expect.reason} among {actual['reasons']}")
    if expect.status is not None and actual["status"] != expect.status:
        problems.append(f"status: expected {expect.status}, got {actual['status']}")
    if expect.policy is not None and expect.policy not in actual["policy_ids"]:
        problems.append(f"policy: expected {expect.policy} among {actual['policy_ids']}")
    missing = sorted(set(expect.risk) - set(actual["risk"]))
    if missing:
        problems.append(f"risk: expected {missing} among {actual['risk']}")
    return problems


def _check_state(golden: GoldenSet, scenario: Scenario, hooks: PythonTransport) -> list[CheckResult]:
    if not scenario.expect_final_state:
        return []
    state: Any = None
    if any(c.path is not None for c in scenario.expect_final_state):
        if golden.setup.state is None:
            raise ConfigError(
                "path checks need setup.state (a function returning the state)", code="no_state"
            )
        state = hooks.resolve(golden.setup.state)[0]()
    results = []
    for check in scenario.expect_final_state:
        value = (
            resolve_path(state, check.path) if check.path is not None else hooks.resolve(str(check.call))[0]()
        )
        results.append(run_check(check, value))
    return results


__all__ = ["EvalReport", "ScenarioResult", "StepOutcome", "golden_path", "run_golden"]
