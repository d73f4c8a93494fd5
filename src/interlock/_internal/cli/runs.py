"""``interlock runs``: replay a recorded run under today's policy, and export a run to a file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from interlock._internal.cli.common import (
    console,
    fail,
    fail_from,
    opened_database,
    print_json,
)
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.limits.value_limits import Ledger
    from interlock._internal.manifest.loader import LoadedManifest
    from interlock._internal.runs.replay import ReplayReport, RunRecord

app = typer.Typer(
    help="Recorded runs: replay them under the current policy, export them.", no_args_is_help=True
)

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

# Exit 1 means "the replay found differences" (with --fail-on-diff); a command that could not run
# at all exits 2, so a CI gate can tell a policy change from a broken invocation.
_ERROR = 2


@app.callback()
def _group() -> None:
    """Recorded runs: replay them under the current policy, export them."""


@app.command()
def replay(
    run_id: Annotated[str | None, typer.Argument(help="The run to replay (from the database).")] = None,
    db: DbOpt = None,
    manifest: Annotated[
        list[Path] | None,
        typer.Option("--manifest", help="Candidate manifest(s); the one for the run's workflow is used."),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="Replay a run export instead of reading the database.")
    ] = None,
    fail_on_diff: Annotated[
        bool, typer.Option("--fail-on-diff", help="Exit 1 when any step's decision differs.")
    ] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every step, not only differences.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Judge a recorded run's actions again under the current (or a candidate) policy; nothing executes.

    Without --manifest the run is judged by its workflow's active version in the database, or,
    with --file, by the manifest stored in the export.
    """
    from interlock._internal.gateway.runtime import build_runtime
    from interlock._internal.runs.replay import read_export, recorded_manifest, replay_run

    if file is None and run_id is None:
        fail("give a RUN_ID or --file", code=_ERROR, as_json=as_json, error_code="usage")
    try:
        ledger: Ledger | None = None
        if file is not None:
            record = read_export(file)
            if run_id is not None and run_id != record.run_id:
                fail(f"{file} holds run {record.run_id}, not {run_id}", code=_ERROR, as_json=as_json)
            candidate = _pick(manifest, record.run["workflow"], as_json=as_json)
            loaded = candidate or recorded_manifest(record, base_dir=file.resolve().parent)
        else:
            assert run_id is not None
            record, loaded, ledger = _from_database(run_id, db, manifest, as_json=as_json)
        runtime = build_runtime(loaded)
        try:
            report = replay_run(record, runtime, ledger=ledger)
        finally:
            runtime.close()
    except InterlockError as exc:
        fail(str(exc), code=_ERROR, as_json=as_json, error_code=exc.code)
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report, show_all=show_all)
    if fail_on_diff and report.changed:
        raise typer.Exit(1)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="The run to export.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the JSON file.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a run (steps with redacted arguments and results, decisions, manifest) to one JSON file."""
    from interlock._internal.runs.replay import load_run, write_export

    try:
        with opened_database(db, as_json=as_json) as engine:
            record = load_run(engine, run_id)
        digest = write_export(record, out)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    except OSError as exc:
        fail(f"{out}: cannot write: {exc.strerror}", as_json=as_json, error_code="unwritable")
    if as_json:
        print_json({"run_id": run_id, "file": str(out), "steps": len(record.steps), "sha256": digest})
    else:
        console.print(
            f"exported run {run_id} ({len(record.steps)} steps) to {escape(str(out))}", highlight=False
        )
        console.print(f"sha256 {digest}", style="dim", highlight=False)


def _from_database(
    run_id: str, db: str | None, manifests: list[Path] | None, *, as_json: bool
) -> tuple[RunRecord, LoadedManifest, Ledger]:
    """The run, the manifest to judge it by, and its value limits' ledger over the workflow's
    recorded actions around the run."""
    from interlock._internal.runs.history import value_ledger
    from interlock._internal.runs.replay import active_manifest, load_run, recorded_manifest

    with opened_database(db, as_json=as_json) as engine:
        record = load_run(engine, run_id)
        workflow = str(record.run["workflow"])
        loaded = _pick(manifests, workflow, as_json=as_json) or active_manifest(engine, workflow)
        if loaded is None:
            loaded = recorded_manifest(record, base_dir=Path.cwd())
        times = [float(step["created_at"]) for step in record.steps if step.get("created_at") is not None]
        ledger = value_ledger(
            engine, loaded.manifest, since=min(times, default=None), until=max(times) + 1 if times else None
        )
    return record, loaded, ledger


def _pick(manifests: list[Path] | None, workflow: str, *, as_json: bool) -> LoadedManifest | None:
    from interlock._internal.manifest.loader import load_manifest

    if not manifests:
        return None
    loaded = [load_manifest(path) for path in manifests]
    for candidate in loaded:
        if candidate.manifest.name == workflow:
            return candidate
    names = ", ".join(sorted(c.manifest.name for c in loaded))
    fail(f"no --manifest is for workflow {workflow!r} (given: {names})", code=_ERROR, as_json=as_json)


def _print_report(report: ReplayReport, *, show_all: bool) -> None:
    data = report.as_dict()["summary"]
    console.print(
        f"run {report.run_id} ({report.workflow}, {report.agent_id}/{report.environment}): "
        f"{data['steps']} steps, [bold]{data['changed']} changed[/], {data['not_comparable']} not comparable",
        highlight=False,
    )
    console.print(
        f"recorded under {report.recorded_manifest_version}; replayed under {report.manifest_version}",
        style="dim",
        highlight=False,
    )
    colour = {"same": "green", "changed": "red", "not_comparable": "yellow"}
    for step in report.steps:
        if step.outcome == "same" and not show_all:
            continue
        why = ", ".join(
            r["code"] + (f" [{r['policy_id']}]" if r.get("policy_id") else "") for r in step.now_reasons
        )
        console.print(
            f"  [{colour[step.outcome]}]#{step.seq} {escape(str(step.tool))}: {step.recorded} → {step.now}[/]"
            f"  ({escape(why)})",
            highlight=False,
        )
        if step.note:
            console.print(f"      {escape(step.note)}", style="dim", highlight=False)
        if step.output_problem:
            console.print(
                f"      recorded output: {escape(step.output_problem)}", style="dim", highlight=False
            )
