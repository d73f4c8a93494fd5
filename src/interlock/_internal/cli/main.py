"""The ``interlock`` command. Each command group lives in its own module and registers here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="interlock",
    help="Interlock: the control plane between AI agents and the systems they act on.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here, not at module import, so `interlock --help` stays fast.
    if app.registered_commands:  # once per process, however many callers ask
        return
    from interlock._internal.cli import (
        agents,
        approvals,
        audit,
        check,
        db,
        demo,
        evals,
        graph,
        init,
        notifications,
        operators,
        ops,
        packages,
        purge,
        report,
        rollout,
        runs,
        serve,
        version,
        whatif,
        workflow,
    )

    app.callback()(version.root)
    app.command("init")(init.init)
    app.add_typer(db.app, name="db")
    app.add_typer(workflow.app, name="workflow")
    app.add_typer(audit.app, name="audit")
    app.command("check")(check.check)
    app.command("serve")(serve.serve)
    app.add_typer(agents.app, name="agents")
    app.add_typer(operators.app, name="operators")
    app.command("demo")(demo.demo)
    app.command("purge")(purge.purge)
    app.add_typer(report.app, name="report")
    app.command("graph")(graph.graph)
    app.add_typer(runs.app, name="runs")
    app.add_typer(approvals.app, name="approvals")
    app.command("whatif")(whatif.whatif)
    app.command("eval")(evals.run_eval)
    app.command("pause")(ops.pause)
    app.command("resume")(ops.resume)
    app.command("pauses")(ops.pauses)
    app.add_typer(ops.handoffs_app, name="handoffs")
    app.add_typer(packages.app, name="packages")
    app.add_typer(notifications.app, name="notifications")
    app.add_typer(rollout.app, name="rollout")


def main() -> None:
    _register()
    app()
