"""Retention: payloads older than a workflow's ``retention_days`` are replaced by their hash.

Purging rewrites only the payload columns: ``runs.trigger``, ``steps.arguments``, ``steps.result``,
``decisions.arguments``, ``approvals.arguments`` and the ``arguments`` inside ``approvals.package``.
A server runs this on its own, from each manifest's ``retention_days`` (api/housekeeping.py);
``interlock purge`` is for doing it by hand.
Each becomes ``{"purged": true, "sha256": <SHA-256 of the payload's canonical JSON>}``. The audit log
is never touched: its events hold argument and result hashes, not payloads, so the chain still
verifies after a purge, and a purged result's marker still equals the result hash its event recorded.

Rows a person may still act on are kept whole: pending approvals, and the steps and decisions they
belong to. Each workflow is purged in one transaction that ends with a ``payloads.purged`` audit event
(what, how many, the cutoff), so the record of a purge commits or rolls back with the purge itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    type_coerce,
    union,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.schema import Column, Table

from interlock._internal.audit.canonical import hash_value
from interlock._internal.audit.chain import append_event
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.tables import approvals, decisions, runs, steps, workflow_versions, workflows
from interlock.exceptions import ArgumentsInvalid

DAY_S = 86_400.0
PURGE_EVENT = "payloads.purged"
# How JSONText stores a marker: sorted keys, no spaces, a 64-digit hash. Matching the exact text lets
# SQL skip rows purged before, on both engines.
_MARKER_PREFIX = '{"purged":true,"sha256":"'
_MARKER_LEN = len(_MARKER_PREFIX) + 64 + 2
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}
_BATCH = 500


def purge_marker(payload: Any) -> dict[str, Any]:
    return {"purged": True, "sha256": hash_value(payload)}


def is_marker(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"purged", "sha256"} and value["purged"] is True


def parse_age(text: str) -> float:
    """``"30d"`` → seconds. Units: s, m, h, d, w."""
    match = _AGE.match(text)
    if match is None:
        raise ArgumentsInvalid(
            f"age {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 30d", field="older_than"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WorkflowPurge:
    """What was (or, in a dry run, would be) purged in one workflow."""

    workflow: str
    cutoff: float
    basis: str
    counts: dict[str, int] = field(default_factory=dict)
    event_seq: int | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class PurgeReport:
    dry_run: bool
    now: float
    purged: list[WorkflowPurge] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(p.total for p in self.purged)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "now": self.now,
            "total": self.total,
            "workflows": [{**asdict(p), "total": p.total} for p in self.purged],
            "skipped": self.skipped,
        }


def purge_payloads(
    engine: Engine,
    *,
    workflow: str | None = None,
    older_than_s: float | None = None,
    dry_run: bool = False,
    actor: str = "system",
    now: float | None = None,
) -> PurgeReport:
    """Purge payloads older than ``older_than_s``, or each workflow's manifest ``retention_days``.

    ``workflow`` limits the purge to one workflow. Without ``older_than_s``, workflows whose active
    manifest sets no ``retention_days`` are skipped and listed in the report. ``dry_run`` counts
    what would be purged and writes nothing.
    """
    at = time.time() if now is None else now
    if older_than_s is not None and older_than_s < 0:
        raise ArgumentsInvalid("older_than must not be negative", field="older_than")
    report = PurgeReport(dry_run=dry_run, now=at)
    with reading(engine) as conn:
        names = [workflow] if workflow is not None else _workflow_names(conn)
        plans: list[WorkflowPurge] = []
        for name in names:
            if older_than_s is not None:
                plans.append(WorkflowPurge(name, at - older_than_s, f"older than {older_than_s:g}s"))
                continue
            days = _retention_days(conn, name)
            if days is None:
                report.skipped[name] = "its active manifest sets no retention_days"
            else:
                plans.append(WorkflowPurge(name, at - days * DAY_S, f"retention_days {days}"))
    for plan in plans:
        if dry_run:
            with reading(engine) as conn:
                _purge_workflow(conn, plan, write=False)
        else:
            with transaction(engine) as conn:
                _purge_workflow(conn, plan, write=True)
                if plan.total:
                    event = append_event(
                        conn,
                        kind=PURGE_EVENT,
                        actor=actor,
                        workflow=plan.workflow,
                        data={
                            "cutoff": plan.cutoff,
                            "basis": plan.basis,
                            "counts": plan.counts,
                            "rows": plan.total,
                        },
                    )
                    plan.event_seq = event.seq
        report.purged.append(plan)
    return report


def _workflow_names(conn: Connection) -> list[str]:
    query = union(
        select(workflows.c.name),
        select(runs.c.workflow).distinct(),
        select(decisions.c.workflow).where(decisions.c.workflow.is_not(None)).distinct(),
        select(approvals.c.workflow).distinct(),
    )
    return sorted(str(row[0]) for row in conn.execute(query))


def _retention_days(conn: Connection, workflow: str) -> int | None:
    text = conn.execute(
        select(workflow_versions.c.manifest)
        .select_from(
            workflows.join(workflow_versions, workflow_versions.c.id == workflows.c.active_version_id)
        )
        .where(workflows.c.name == workflow)
    ).scalar()
    if text is None:
        return None
    # The stored text was validated when it was loaded; only this one field is needed here.
    data = yaml.safe_load(text)
    days = data.get("retention_days") if isinstance(data, dict) else None
    return days if isinstance(days, int) and not isinstance(days, bool) and days > 0 else None


def _not_purged(column: Column[Any]) -> ColumnElement[bool]:
    raw = type_coerce(column, Text)
    return or_(
        func.length(raw) != _MARKER_LEN,
        func.substr(raw, 1, len(_MARKER_PREFIX)) != literal(_MARKER_PREFIX, Text),
    )


def _purge_workflow(conn: Connection, plan: WorkflowPurge, *, write: bool) -> None:
    # Steps and decisions a pending approval still needs stay whole until it is decided.
    waiting = select(approvals.c.step_id).where(approvals.c.state == "pending")
    of_workflow = select(runs.c.id).where(runs.c.workflow == plan.workflow)
    step_filter = and_(
        steps.c.run_id.in_(of_workflow),
        steps.c.created_at < plan.cutoff,
        steps.c.id.not_in(waiting),
    )
    decision_filter = and_(
        decisions.c.workflow == plan.workflow,
        decisions.c.created_at < plan.cutoff,
        or_(decisions.c.step_id.is_(None), decisions.c.step_id.not_in(waiting)),
    )
    run_filter = and_(runs.c.workflow == plan.workflow, runs.c.started_at < plan.cutoff)
    for table, column, where in (
        (runs, runs.c.trigger, run_filter),
        (steps, steps.c.arguments, step_filter),
        (steps, steps.c.result, step_filter),
        (decisions, decisions.c.arguments, decision_filter),
    ):
        plan.counts[f"{table.name}.{column.name}"] = _purge_column(conn, table, column, where, write=write)
    args_count, package_count = _purge_approvals(conn, plan, write=write)
    plan.counts["approvals.arguments"] = args_count
    plan.counts["approvals.package.arguments"] = package_count


def _purge_column(
    conn: Connection, table: Table, column: Column[Any], where: ColumnElement[bool], *, write: bool
) -> int:
    where = and_(where, column.is_not(None), _not_purged(column))
    if not write:
        return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())
    key = table.c.id
    stmt = table.update().where(key == bindparam("b_id")).values({column.name: bindparam("b_value")})
    count = 0
    for rows in _pages(conn, select(key, column).where(where), key):
        conn.execute(stmt, [{"b_id": row[0], "b_value": purge_marker(row[1])} for row in rows])
        count += len(rows)
    return count


def _purge_approvals(conn: Connection, plan: WorkflowPurge, *, write: bool) -> tuple[int, int]:
    # The package is one JSON document; whether its arguments were purged is decided here, not in SQL.
    where = and_(
        approvals.c.workflow == plan.workflow,
        approvals.c.created_at < plan.cutoff,
        approvals.c.state != "pending",
    )
    query = select(approvals.c.id, approvals.c.arguments, approvals.c.package).where(where)
    stmt = (
        approvals.update()
        .where(approvals.c.id == bindparam("b_id"))
        .values(arguments=bindparam("b_arguments"), package=bindparam("b_package"))
    )
    args_count = package_count = 0
    for rows in _pages(conn, query, approvals.c.id):
        changes = []
        for approval_id, arguments, package in rows:
            new_args, new_package = arguments, package
            if arguments is not None and not is_marker(arguments):
                new_args = purge_marker(arguments)
                args_count += 1
            if (
                isinstance(package, dict)
                and package.get("arguments") is not None
                and not is_marker(package["arguments"])
            ):
                new_package = {**package, "arguments": purge_marker(package["arguments"])}
                package_count += 1
            if new_args is not arguments or new_package is not package:
                changes.append({"b_id": approval_id, "b_arguments": new_args, "b_package": new_package})
        if write and changes:
            conn.execute(stmt, changes)
    return args_count, package_count


def _pages(conn: Connection, query: Any, key: Column[Any]) -> Iterator[Sequence[Any]]:
    # Keyset pages: memory stays flat however many rows are old.
    after: Any = None
    while True:
        page = query.order_by(key).limit(_BATCH)
        if after is not None:
            page = page.where(key > after)
        rows = conn.execute(page).all()
        if not rows:
            return
        yield rows
        after = rows[-1][0]
        if len(rows) < _BATCH:
            return


__all__ = [
    "PURGE_EVENT",
    "PurgeReport",
    "WorkflowPurge",
    "is_marker",
    "parse_age",
    "purge_marker",
    "purge_payloads",
]
