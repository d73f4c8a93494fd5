"""``interlock eval``: run a workflow's golden set through the real pipeline and gate on its pass rate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from interlock._internal.cli.common import console, err_console, fail, load_settings, print_json
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.evals.runner import EvalReport
    from interlock._internal.manifest.loader import LoadedManifest

# Exit 1 is "below the threshold" (the gate); a command that could not run exits 2.
_ERROR = 2


def run_eval(
    target: Annotated[
        str,
        typer.Argument(help="A workflow manifest, a folder holding workflow.yaml, or a configured workflow."),
    ],
    golden: Annotated[
        Path | None,
        typer.Option("--golden", help="Golden set (YAML or JSONL); default: evaluation.golden_set."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", min=0, max=1, help="Override evaluation.threshold.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Also write the report as JUnit XML (one case per scenario)."),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option("--summary", help="Also write a Markdown summary for a pull-request comment."),
    ] = None,
) -> None:
    """Run every golden scenario in isolation through the pipeline; exit 1 below the pass threshold."""
    from interlock._internal.evals.golden import load_golden
    from interlock._internal.evals.runner import golden_path, run_golden

    try:
        loaded = _resolve(target)
        path = golden if golden is not None else golden_path(loaded)
        scenarios = load_golden(path)
        with Progress(
            TextColumn("evaluating {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task(loaded.manifest.name, total=len(scenarios.scenarios))
            report = run_golden(
                loaded,
                scenarios,
                golden_name=str(path),
                threshold=threshold,
                progress=lambda _result: bar.advance(task),
            )
    except InterlockError as exc:
        fail(str(exc), code=_ERROR, as_json=as_json, error_code=exc.code)
    _ci_outputs(report, junit=junit, summary=summary, as_json=as_json)
    if as_json:
        print_json(report.as_dict())
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _ci_outputs(report: EvalReport, *, junit: Path | None, summary: Path | None, as_json: bool) -> None:
    from interlock._internal.evals.ci import eval_junit, eval_markdown, write

    try:
        if junit is not None:
            write(junit, eval_junit(report))
        if summary is not None:
            write(summary, eval_markdown(report))
    except OSError as exc:
        fail(
            f"cannot write {exc.filename}: {exc.strerror}",
            code=_ERROR,
            as_json=as_json,
            error_code="write_failed",
        )


def _resolve(target: str) -> LoadedManifest:
    from interlock._internal.manifest.loader import load_manifest
    from interlock.exceptions import NotFound

    path = Path(target)
    if path.is_dir():
        path = path / "workflow.yaml"
    if path.exists() or target.endswith((".yaml", ".yml")):
        return load_manifest(path)
    for configured in load_settings().manifests:
        loaded = load_manifest(configured)
        if loaded.manifest.name == target:
            return loaded
    raise NotFound(
        f"{target!r} is neither a manifest file nor a configured workflow", code="unknown_workflow"
    )


def _print(report: EvalReport) -> None:
    console.print(f"{report.workflow}: golden set {escape(report.golden)}", highlight=False)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("category")
    table.add_column("passed", justify="right")
    for category, (passed, total) in report.by_category().items():
        style = "green" if passed == total else "red"
        table.add_row(escape(category), f"[{style}]{passed}/{total}[/]")
    console.print(table)
    for result in report.results:
        if result.passed:
            continue
        console.print(
            f"[bold red]FAIL[/] {escape(result.id)} ({escape(result.category)}): "
            f"{escape(result.description)}",
            highlight=False,
        )
        if result.error:
            console.print(f"    error: {escape(result.error)}", highlight=False)
        failed = [step for step in result.steps if not step.ok]
        shown: set[int] = set()
        for step in failed:
            if step.step in shown:
                continue  # one failing attempt per step tells the story; the rest are counted
            shown.add(step.step)
            more = sum(1 for other in failed if other.step == step.step) - 1
            attempt = f" (attempt {step.attempt + 1})" if step.attempt else ""
            console.print(f"    step {step.step + 1}{attempt} {escape(step.tool)}:", highlight=False)
            for problem in step.problems:
                console.print(f"      - {escape(problem)}", highlight=False)
            console.print(
                f"      actual: {step.actual['decision']} / {step.actual['status']} "
                f"{escape(', '.join(step.actual['reasons']))}"
                + (f"; {more} later attempts of this step failed too" if more else ""),
                style="dim",
                highlight=False,
            )
        for check in result.checks:
            if not check.ok:
                console.print(
                    f"    state {escape(check.subject)}: expected {escape(check.expected)}, got "
                    f"{escape(repr(check.as_dict()['actual']))}",
                    highlight=False,
                )
    verdict = "[bold green]PASS[/]" if report.ok else "[bold red]FAIL[/]"
    console.print(
        f"{verdict} {report.passed}/{report.total} scenarios ({report.pass_rate:.1%}); "
        f"threshold {report.threshold:.0%} — manifest {report.manifest_version}",
        highlight=False,
    )


app = typer.Typer(help="Evaluation gate over a golden set.")
app.command("eval")(run_eval)
