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


DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
TrustedOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--trusted-checkpoint",
        help="A signed checkpoint kept outside the database (a witness file, or `audit checkpoint "
        "--json` output); the log must still extend it. Repeatable.",
        show_default=False,
    ),
]


@app.command()
def verify(db: DbOpt = None, trusted_checkpoint: TrustedOpt = None, as_json: JsonOpt = False) -> None:
    """Verify the audit log: every hash, every signed checkpoint (stored, in the witness directory,
    and given with --trusted-checkpoint), and every approval's deciders and votes. Exits 1 naming
    the first event or checkpoint that disagrees."""
    # Imported here so `interlock --help` does not load SQLAlchemy and Alembic.
    from interlock._internal.audit.anchored import verify_with_settings
    from interlock._internal.audit.verify import VerifyReport

    settings = load_settings(db)
    files = list(trusted_checkpoint or [])
    report: VerifyReport
    with opened_database(db, as_json=as_json) as engine:
        try:
            if as_json or not err_console.is_terminal:
                report = verify_with_settings(engine, settings.audit, trusted_files=files)
            else:
                with err_console.status("verifying the audit log…") as status:
                    report = verify_with_settings(
                        engine,
                        settings.audit,
                        trusted_files=files,
                        progress=lambda n: status.update(f"verifying the audit log… {n} events"),
                    )
        except InterlockError as exc:
            fail_from(exc, as_json=as_json)
    if not report.ok:
        if as_json:
            print_json(
                {"error": {"code": AuditIntegrityError.code, "message": report.message}, **report.as_dict()}
            )
            raise SystemExit(1)
        fail(report.message, error_code=AuditIntegrityError.code)
    if as_json:
        print_json(report.as_dict())
    else:
        console.print(report.message, highlight=False)


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
    """Verify the whole log, then sign a checkpoint at its tip and publish it to the witnesses.

    Nothing is signed when verification fails: a signature over a rewritten log would bless it.
    """
    from interlock._internal.audit.anchored import verify_with_settings
    from interlock._internal.audit.checkpoints import write_checkpoint
    from interlock._internal.audit.witness import witnesses_from_settings

    settings = load_settings(db)
    try:
        key = _audit_key(settings)
        with opened_database(db, as_json=as_json) as engine:
            with err_console.status("verifying the audit log…"):
                report = verify_with_settings(engine, settings.audit)
            if not report.ok:
                fail(
                    f"{report.message}; no checkpoint signed",
                    as_json=as_json,
                    error_code=AuditIntegrityError.code,
                )
            with err_console.status("checkpointing the audit log…"):
                cp = write_checkpoint(engine, key, witnesses=witnesses_from_settings(settings.audit))
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
        print_json({"checkpoint": cp.as_dict(), "verified_events": report.events})
    else:
        console.print(
            f"log verified ({report.events} events); checkpoint {cp.seq}: tip {cp.tip_hash[:12]}, "
            f"merkle root {cp.merkle_root[:12]}, key {cp.key_id}",
            highlight=False,
        )


@app.command()
def consistency(
    first: Annotated[int, typer.Option("--from", help="The earlier checkpoint's seq.", show_default=False)],
    second: Annotated[
        int | None, typer.Option("--to", help="The later checkpoint's seq (default: the newest).")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the RFC 9162 consistency proof that checkpoint --to extends checkpoint --from, checked."""
    from interlock._internal.audit.checkpoints import (
        MerkleTree,
        consistency_proof,
        event_hashes,
        leaf_hash,
        stored_checkpoints,
        verify_consistency,
    )

    settings = load_settings(db)
    try:
        key = _audit_key(settings)
        with opened_database(db, as_json=as_json) as engine:
            mine = {cp.seq: cp for cp, _f in stored_checkpoints(engine) if cp.key_id == key.key_id}
            upto = second if second is not None else max(mine, default=0)
            if first not in mine or upto not in mine:
                raise NotFound(
                    f"no checkpoint by the audit key at seq {first if first not in mine else upto}",
                    code="unknown_checkpoint",
                )
            a, b = mine[first], mine[upto]
            tree = MerkleTree(leaf_hash(h) for h in event_hashes(engine, upto=b.seq))
            proof = consistency_proof(tree, a.seq) if a.seq < b.seq else []
    except ValueError as exc:
        fail(str(exc), as_json=as_json, error_code="invalid_request")
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    ok = (
        a.verify(key.public)
        and b.verify(key.public)
        and verify_consistency(
            a.seq, b.seq, bytes.fromhex(a.merkle_root), bytes.fromhex(b.merkle_root), proof
        )
    )
    result = {"ok": ok, "first": a.as_dict(), "second": b.as_dict(), "consistency": [p.hex() for p in proof]}
    if as_json:
        print_json(result)
    else:
        verdict = "extends" if ok else "does NOT extend"
        console.print(f"checkpoint {b.seq} {verdict} checkpoint {a.seq} ({len(proof)} proof hashes)")
        for p in proof:
            console.print(p.hex(), highlight=False)
    if not ok:
        raise SystemExit(1)


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
    from interlock._internal.audit.witness import witnesses_from_settings
    from interlock._internal.packages.signing import PackageKey

    settings = load_settings(db)
    try:
        key = _audit_key(settings)
        with opened_database(db, as_json=as_json) as engine, err_console.status("exporting…") as status:
            bundle = export_bundle(
                engine,
                run,
                key,
                progress=lambda msg: status.update(msg + "…"),
                witnesses=witnesses_from_settings(settings.audit),
                package_key=PackageKey.from_seed(settings.packages.signing_seed).public,
            )
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


def _key_text(value: str) -> str:
    """The key itself, or the text of the file it names (a key is never a path that exists)."""
    candidate = Path(value)
    if len(value) < 4096 and "\n" not in value and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    return value


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
    package_key: Annotated[
        str | None,
        typer.Option(
            "--package-key",
            help=(
                "The trusted work-package public key (as --public-key), when the run was started "
                "with a package; without it the key the bundle names is used."
            ),
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify an evidence bundle offline (no database): signatures, hashes, proofs, versions and
    the work package."""
    from interlock._internal.audit.evidence import load_bundle
    from interlock._internal.audit.evidence import verify_bundle as check
    from interlock._internal.audit.keys import load_public_key

    try:
        trusted = load_public_key(_key_text(public_key))
        trusted_package = None if package_key is None else load_public_key(_key_text(package_key))
        bundle = load_bundle(file)
    except OSError as exc:
        fail(f"cannot read the public key file: {exc.strerror}", as_json=as_json, error_code="config_error")
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    report = check(bundle, trusted, package_key=trusted_package)
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
