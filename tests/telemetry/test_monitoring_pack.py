"""The operations pack in deploy/monitoring: the Prometheus alert rules pass ``promtool check rules``
and their own ``promtool test rules``, and every metric the rules and the Grafana dashboard query is
one that Interlock's /metrics actually serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from conftest import REPO

PACK = REPO / "deploy" / "monitoring"
RULES = PACK / "alerts.yml"
RULES_TEST = PACK / "alerts_test.yml"
DASHBOARD = PACK / "grafana-dashboard.json"
METRIC = re.compile(r"\binterlock_[a-z_]+\b")
# Suffixes Prometheus queries add to a family's exposed name.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        why = "no promtool: install Debian's prometheus package (apt-get install -y prometheus)"
        if os.environ.get("INTERLOCK_REQUIRE_PROMTOOL") == "1":
            pytest.fail(why + " (INTERLOCK_REQUIRE_PROMTOOL=1)")
        pytest.skip(why)
    return found


def test_alert_rules_pass_promtool_check() -> None:
    proc = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


def test_alert_rules_fire_on_their_own_unit_tests() -> None:
    proc = subprocess.run(
        [_promtool(), "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACK,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def _dashboard_exprs() -> list[str]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in data["panels"] for target in panel["targets"]]
    exprs += [v["query"]["query"] for v in data["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_the_dashboard_covers_what_the_issue_asks() -> None:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    titles = {panel["title"] for panel in data["panels"]}
    for wanted in ("Denial share", "Escalation rate", "Spend (USD per hour)", "Circuit breakers open"):
        assert wanted in titles
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))


def test_every_queried_metric_is_served(harness: Any) -> None:
    run = harness.run()
    harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    served = set()
    for line in generate_latest(harness.il.metrics.registry).decode().splitlines():
        if line.startswith("# TYPE "):
            served.add(line.split()[2])
    assert {"interlock_circuits_open", "interlock_outcome_unknown_recent"} <= served
    assert "interlock_audit_checkpoint_age_seconds" in served
    queried = set(METRIC.findall(RULES.read_text(encoding="utf-8")))
    for expr in _dashboard_exprs():
        queried |= set(METRIC.findall(expr))
    missing = []
    for name in sorted(queried):
        family = next((name.removesuffix(s) for s in SUFFIXES if name.endswith(s)), name)
        if name not in served and family not in served:
            missing.append(name)
    assert missing == []


def test_the_pack_is_documented() -> None:
    text = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "deploy/monitoring" in text
    assert Path(PACK / "README.md").is_file()
