"""CI outputs of ``interlock eval`` and ``interlock whatif``: JUnit XML for test reporters and a
Markdown summary fit for a pull-request comment.

JUnit (the schema Jenkins, GitLab and GitHub reporters read): one ``<testsuite>`` per command,
inside ``<testsuites>``. For ``eval`` every golden scenario is a ``<testcase>`` (classname
``<workflow>.<category>``) with a ``<failure>`` naming each failing step and state check, plus a
``pass-rate`` case that fails below the threshold. For ``whatif`` the ``change-gate`` case fails
when the candidate changes more than allowed, and each kind of change is a case whose output lists
examples. Written with ElementTree, so any text (agents' arguments included) is escaped.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from interlock._internal.evals.runner import EvalReport, ScenarioResult
from interlock._internal.evals.whatif import LABELS, WhatIfReport

_MAX_TEXT = 20_000


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def _suite(parent: ET.Element, name: str, *, tests: int, failures: int, time_s: float) -> ET.Element:
    return ET.SubElement(
        parent,
        "testsuite",
        {
            "name": name,
            "tests": str(tests),
            "failures": str(failures),
            "errors": "0",
            "time": f"{time_s:.3f}",
        },
    )


def _scenario_failure(result: ScenarioResult) -> tuple[str, str]:
    lines: list[str] = []
    if result.error:
        lines.append(f"error: {result.error}")
    for step in result.steps:
        if step.ok:
            continue
        attempt = f" (attempt {step.attempt + 1})" if step.attempt else ""
        lines.append(f"step {step.step + 1}{attempt} {step.tool}:")
        lines += [f"  - {problem}" for problem in step.problems]
        lines.append(
            f"  actual: {step.actual.get('decision')} / {step.actual.get('status')} "
            f"{', '.join(step.actual.get('reasons', []))}"
        )
    for check in result.checks:
        if not check.ok:
            lines.append(
                f"state {check.subject}: expected {check.expected}, got {check.as_dict()['actual']!r}"
            )
    message = lines[0] if lines else "scenario failed"
    return message[:500], "\n".join(lines)[:_MAX_TEXT]


def eval_junit(report: EvalReport) -> bytes:
    root = ET.Element("testsuites", {"name": "interlock eval"})
    failures = report.total - report.passed + (0 if report.ok else 1)
    duration = sum(r.duration_s for r in report.results)
    suite = _suite(
        root, f"interlock eval {report.workflow}", tests=report.total + 1, failures=failures, time_s=duration
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("manifest_version", report.manifest_version),
        ("golden", report.golden),
        ("threshold", f"{report.threshold:g}"),
        ("pass_rate", f"{report.pass_rate:.4f}"),
    ):
        ET.SubElement(props, "property", {"name": name, "value": value})
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"{report.workflow}.{result.category}",
                "name": result.id,
                "time": f"{result.duration_s:.3f}",
            },
        )
        if not result.passed:
            message, text = _scenario_failure(result)
            failure = ET.SubElement(case, "failure", {"message": message, "type": "ScenarioFailed"})
            failure.text = text
        if result.description:
            ET.SubElement(case, "system-out").text = result.description
    gate = ET.SubElement(suite, "testcase", {"classname": f"{report.workflow}.gate", "name": "pass-rate"})
    if not report.ok:
        ET.SubElement(
            gate,
            "failure",
            {
                "message": f"pass rate {report.pass_rate:.1%} is below the threshold {report.threshold:.0%}",
                "type": "BelowThreshold",
            },
        )
    return _xml(root)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def eval_markdown(report: EvalReport) -> str:
    verdict = "✅ passed" if report.ok else "❌ failed"
    lines = [
        f"### Interlock eval — `{report.workflow}` {verdict}",
        "",
        f"**{report.passed}/{report.total}** golden scenarios pass ({report.pass_rate:.1%}); "
        f"threshold {report.threshold:.0%}. Manifest `{report.manifest_version}`.",
        "",
        "| category | passed |",
        "| --- | ---: |",
    ]
    for category, (passed, total) in report.by_category().items():
        mark = "" if passed == total else " ❌"
        lines.append(f"| {_cell(category)} | {passed}/{total}{mark} |")
    failed = [r for r in report.results if not r.passed]
    if failed:
        lines += ["", "<details><summary>Failing scenarios</summary>", ""]
        for result in failed:
            message, _ = _scenario_failure(result)
            lines.append(f"- **{_cell(result.id)}** ({_cell(result.category)}): {_cell(message)}")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def whatif_junit(
    report: WhatIfReport, *, max_changes: int | None, max_change_rate: float | None, exceeded: bool
) -> bytes:
    root = ET.Element("testsuites", {"name": "interlock whatif"})
    suite = _suite(
        root,
        f"interlock whatif {report.workflow}",
        tests=1 + len(report.transitions),
        failures=1 if exceeded else 0,
        time_s=report.elapsed_s,
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("candidate_version", report.candidate_version),
        ("decisions", str(report.total)),
        ("changed", str(report.changed)),
        ("change_rate", f"{report.change_rate:.4f}"),
        ("max_changes", "" if max_changes is None else str(max_changes)),
        ("max_change_rate", "" if max_change_rate is None else f"{max_change_rate:g}"),
    ):
        ET.SubElement(props, "property", {"name": name, "value": value})
    gate = ET.SubElement(suite, "testcase", {"classname": f"{report.workflow}.whatif", "name": "change-gate"})
    if exceeded:
        limit = f"max {max_changes}" if max_changes is not None else f"max rate {max_change_rate:.2%}"
        ET.SubElement(
            gate,
            "failure",
            {
                "message": f"{report.changed} of {report.total} recorded decisions change ({limit})",
                "type": "TooManyChanges",
            },
        )
    for label, count in sorted(report.transitions.items()):
        case = ET.SubElement(
            suite, "testcase", {"classname": f"{report.workflow}.whatif.transition", "name": label}
        )
        examples = report.examples.get(label, [])
        out = [f"{count} decisions: {LABELS.get(label, label)}"]
        out += [_example(e) for e in examples]
        ET.SubElement(case, "system-out").text = "\n".join(out)[:_MAX_TEXT]
    return _xml(root)


def _example(example: dict[str, Any]) -> str:
    args = json.dumps(example.get("arguments"), ensure_ascii=False, sort_keys=True)
    if len(args) > 200:
        args = args[:197] + "..."
    return f"{example.get('agent_id')} {example.get('tool')} {args}"


def whatif_markdown(
    report: WhatIfReport, *, max_changes: int | None, max_change_rate: float | None, exceeded: bool
) -> str:
    verdict = "❌ too many changes" if exceeded else "✅ within the gate"
    limits = []
    if max_changes is not None:
        limits.append(f"at most {max_changes} changes")
    if max_change_rate is not None:
        limits.append(f"at most {max_change_rate:.2%} of decisions")
    lines = [
        f"### Interlock what-if — `{report.workflow}` {verdict}",
        "",
        f"Candidate `{report.candidate_version}` re-judged **{report.total}** recorded decisions: "
        f"**{report.changed} change** ({report.change_rate:.2%}), {report.unchanged} unchanged, "
        f"{report.held} held as recorded, {report.not_comparable} not comparable."
        + (f" Gate: {', '.join(limits)}." if limits else ""),
    ]
    if report.transitions:
        lines += ["", "| change | decisions |", "| --- | ---: |"]
        for label, count in sorted(report.transitions.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"| {_cell(LABELS.get(label, label))} | {count} |")
        shown = [(label, e) for label in sorted(report.examples) for e in report.examples[label]]
        if shown:
            lines += ["", "<details><summary>Examples</summary>", ""]
            lines += [f"- {_cell(LABELS.get(label, label))}: `{_cell(_example(e))}`" for label, e in shown]
            lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


__all__ = ["eval_junit", "eval_markdown", "whatif_junit", "whatif_markdown", "write"]
