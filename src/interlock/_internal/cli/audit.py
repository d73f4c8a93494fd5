"""``interlock audit``: verify and checkpoint the audit log; export and verify evidence bundles."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from interlock._internal.cli.common import (
    console,
    err_console,
    fail,
    fail_from,
    load_settings,
    opened_database,
    print_json,
)
from interlock.exceptions import AuditIntegrityError, ConfigError, InterlockError, NotFound

if TYPE_CHECKING:
    from interlock._internal.audit.keys import AuditKey
    from interlock._internal.settings import Settings

app = typer.Typer(
    help="The tamper-evident audit log: verify it, checkpoint it, export and verify evidence bundles.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """The tamper-evident audit log: verify it, checkpoint it, export and verify evidence bundles."""


@app.command()
def verify(
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Recompute every hash of the audit chain; exit 1 naming the first event that does not verify."""
    # Imported here so `interlock --help` does not load SQLAlchemy and Alembic.
    from interlock._internal.audit.verify import VerifyReport, verify_chain

    report: VerifyReport
    with opened_database(db, as_json=as_json) as engine:
        try:
            if as_json or not err_console.is_terminal:
                report = verify_chain(engine)
            else:
                with err_console.status("verifying the audit chain…") as status:
                    report = verify_chain(
                        engine, progress=lambda n: status.update(f"verifying the audit chain… {n} events")
                    )
        except InterlockError as exc:
            fail_from(exc, as_json=as_json)
    if not report.ok:
        fail(report.message, as_json=as_json, error_code=AuditIntegrityError.code)
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(report.message, highlight=False)


DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _audit_key(settings: Settings) -> AuditKey:
    from interlock._internal.audit.keys import AuditKey

    if "audit.signing_seed" in settings.default_secrets_in_use():
        # Anyone can derive the key from the shipped seed and sign whatever they like with it.
        err_console.print(
            "[yellow]warning:[/] audit.signing_seed is the shipped default; "
            "signatures made with it prove nothing",
            highlight=False,
        )
    return AuditKey.from_settings(settings.audit)


@app.command()
def checkpoint(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Sign a checkpoint of the audit log at its current tip (Merkle root over every event hash)."""
    from interlock._internal.audit.checkpoints import write_checkpoint

    settings = load_settings(db)
    try:
        key = _audit_key(settings)
        with (
            opened_database(db, as_json=as_json) as engine,
            err_console.status("checkpointing the audit log…"),
        ):
            cp = write_checkpoint(engine, key)
    except NotFound as exc:
        if exc.code != "audit_empty":
            fail_from(exc, as_json=as_json)
        if as_json:
            print_json({"checkpoint": None, "message": exc.message})
        else:
            console.print(f"{exc.message}; no checkpoint written", highlight=False)
        return
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json({"checkpoint": cp.as_dict()})
    else:
        console.print(
            f"checkpoint {cp.seq}: tip {cp.tip_hash[:12]}, "
            f"merkle root {cp.merkle_root[:12]}, key {cp.key_id}",
            highlight=False,
        )


@app.command("public-key")
def public_key(as_json: JsonOpt = False) -> None:
    """Print the audit public key (PEM and raw hex) that verifies checkpoints and evidence bundles."""
    settings = load_settings()
    try:
        key = _audit_key(settings)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if as_json:
        print_json({"key_id": key.key_id, "ed25519": key.public_hex, "pem": key.public_pem})
        return
    sys.stdout.write(key.public_pem)
    sys.stdout.write(f"ed25519 {key.public_hex}\nkey id {key.key_id}\n")


@app.command()
def export(
    run: Annotated[str, typer.Option("--run", help="The run to export.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Where to write the bundle (JSON).", show_default=False)],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a signed evidence bundle of one run, verifiable offline with `interlock audit verify-bundle`."""
    from interlock._internal.audit.evidence import bundle_bytes, export_bundle

    settings = load_settings(db)
    try:
        key = _audit_key(settings)
        with opened_database(db, as_json=as_json) as engine, err_console.status("exporting…") as status:
            bundle = export_bundle(engine, run, key, progress=lambda msg: status.update(msg + "…"))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(bundle_bytes(bundle))
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror}") from exc
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    summary = {
        "out": str(out),
        "run": run,
        "events": len(bundle["events"]),
        "checkpoint": bundle["checkpoint"]["seq"],
        "key_id": bundle["public_key"]["key_id"],
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"wrote {out}: run {run}, {summary['events']} events, checkpoint {summary['checkpoint']}, "
            f"key {summary['key_id']}",
            highlight=False,
        )


@app.command("verify-bundle")
def verify_bundle(
    file: Annotated[Path, typer.Argument(help="The evidence bundle (JSON).", show_default=False)],
    public_key: Annotated[
        str,
        typer.Option(
            "--public-key",
            help="The trusted audit public key: 64 hex digits, a PEM block, or a file holding either.",
            show_default=False,
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Verify an evidence bundle offline (no database): signatures, hashes, proofs and versions."""
    from interlock._internal.audit.evidence import load_bundle
    from interlock._internal.audit.evidence import verify_bundle as check
    from interlock._internal.audit.keys import load_public_key

    try:
        key_text = public_key
        candidate = Path(public_key)
        # A key is never a path that exists, so a readable file named here is the key's file.
        if len(public_key) < 4096 and "\n" not in public_key and candidate.is_file():
            key_text = candidate.read_text(encoding="utf-8")
        trusted = load_public_key(key_text)
        bundle = load_bundle(file)
    except OSError as exc:
        fail(f"cannot read the public key file: {exc.strerror}", as_json=as_json, error_code="config_error")
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    report = check(bundle, trusted)
    if as_json:
        print_json(report.as_dict())
        if not report.ok:
            raise SystemExit(1)
        return
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if not report.ok:
        for problem in report.problems:
            err_console.print(f"[bold red]failed:[/] {escape(problem)}", highlight=False, soft_wrap=True)
        fail(f"bundle NOT verified: {len(report.problems)} problem(s)", error_code=AuditIntegrityError.code)
    console.print(report.message, highlight=False)
