"""Checks on verifier gates (``verification``) and model tiers (``models``) that the models cannot
see alone: agents, rules, tools and tiers they name must exist, and a verifier must hold ``verify``.

Run by the loader's checker after rules are checked; every error names its file and line.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from interlock._internal.manifest.models import VERIFY, SettleRule

if TYPE_CHECKING:
    from interlock._internal.manifest.loader import YamlPath, _Checker


class RoutingChecks:
    def __init__(self, checker: _Checker) -> None:
        self.c = checker
        self.m = checker.m

    def run(self) -> None:
        if self.m.verification is not None:
            self.check_verification()
        if self.m.models is not None:
            self.check_models()

    # ---- verification ------------------------------------------------------------------------

    def check_verification(self) -> None:
        spec = self.m.verification
        assert spec is not None
        base: YamlPath = ("verification",)
        self.c.unique(
            [(v.agent, (*base, "verifiers", i, "agent")) for i, v in enumerate(spec.verifiers)], "verifier"
        )
        review_ids = {
            rule.id or f"require_approval[{i}]" for i, rule in enumerate(self.m.rules.require_approval)
        }
        agents = {a.id: a for a in self.m.agents}
        for i, verifier in enumerate(spec.verifiers):
            where: YamlPath = (*base, "verifiers", i)
            agent = agents.get(verifier.agent)
            if agent is None:
                self.c.fail(
                    f"agent '{verifier.agent}' is not declared under agents{_hint(verifier.agent, agents)}",
                    *where,
                    "agent",
                )
            grants = [self.m.roles[r] for r in agent.roles if r in self.m.roles]
            if not any(VERIFY in g.verbs for g in grants):
                self.c.fail(
                    f"agent '{verifier.agent}' is a verifier, but none of its roles "
                    f"({', '.join(agent.roles)}) grants the verb '{VERIFY}'",
                    *where,
                    "agent",
                )
            for j, rule in enumerate(verifier.rules or []):
                if rule not in review_ids:
                    self.c.fail(
                        f"unknown require_approval rule '{rule}'{_hint(rule, review_ids)}",
                        *where,
                        "rules",
                        j,
                    )
        verifier_ids = {v.agent for v in spec.verifiers}
        ids: list[tuple[str, YamlPath]] = []
        for key in ("settle", "never_settle"):
            settles: list[SettleRule] = getattr(spec, key)
            for i, settle in enumerate(settles):
                self.check_settle_rule(settle, (*base, key, i), verifier_ids)
                ids.append((settle.id, (*base, key, i, "id")))
        self.c.unique(ids, "verification rule id")

    def check_settle_rule(self, rule: SettleRule, where: YamlPath, verifiers: set[str]) -> None:
        tools = [
            self.c.known_tool(name, *where, "tool", *(() if isinstance(rule.tool, str) else (j,)))
            for j, name in enumerate(rule.tool_list())
        ]
        if rule.when is not None:
            if not tools:
                self.c.fail(
                    "a rule with 'when' must name its tool(s): the condition is checked against "
                    "their input schema",
                    *where,
                    "when",
                )
            for tool in tools:
                self.c.condition(rule.when, tool, (*where, "when"))
        for j, agent in enumerate(rule.verifiers or []):
            if agent not in verifiers:
                self.c.fail(
                    f"'{agent}' is not one of verification.verifiers{_hint(agent, verifiers)}",
                    *where,
                    "verifiers",
                    j,
                )

    # ---- model tiers -------------------------------------------------------------------------

    def check_models(self) -> None:
        spec = self.m.models
        assert spec is not None
        self.c.unique(
            [(t.name, ("models", "tiers", i, "name")) for i, t in enumerate(spec.tiers)], "model tier"
        )
        tiers = {t.name for t in spec.tiers}
        for task, tier in spec.tasks.items():
            if tier not in tiers:
                self.c.fail(
                    f"tier '{tier}' is not declared under models.tiers{_hint(tier, tiers)}",
                    "models",
                    "tasks",
                    task,
                )


def _hint(name: str, known: object) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)  # type: ignore[call-overload]
    return f"; did you mean '{close[0]}'?" if close else ""


__all__ = ["RoutingChecks"]
