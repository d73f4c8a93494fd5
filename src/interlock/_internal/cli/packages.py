"""``interlock packages``: issue, show, verify and revoke signed work packages.

Issuing and revoking act as a named operator (``--as ID``, an admin or owner of the workflow), on
the database directly, like ``interlock approvals``; a CI job without database access uses
``POST /v1/packages`` with an operator token instead. ``verify --public-key`` needs no database: it
is what a runner does before it starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape

from interlock._internal.cli.approvals import (
    DbOpt,
    JsonOpt,
    RequiredAsOpt,
    _load_workflow,
    _opened,
    _operator,
)
from interlock._internal.cli.common import console, fail, fail_from, load_settings, print_json
from interlock.exceptions import InterlockError

if TYPE_CHECKING:
    from interlock._internal.packages.models import WorkPackage

app = typer.Typer(
    help="Signed work packages: what one agent may do in one run (tools, argument bounds, budget, "
    "expiry). Issue one, show it, verify it offline, revoke it.",
    no_args_is_help=True,
)

IdArg = Annotated[str, typer.Argument(metavar="PACKAGE_ID", help="The package id (pkg_…).")]


def package_dict(package: WorkPackage, *, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    data = package.model_dump()
    if usage is not None:
        data["usage"] = usage
    return data


@app.command("issue")
def issue(
    spec: Annotated[
        Path,
        typer.Argument(
            metavar="SPEC",
            help="YAML or JSON: workflow, agent, task, tools {name: {max_calls, arguments: {arg: {min, max, "
            "max_total, one_of}}}}, budget_usd, ttl_s (seconds), environment, manifest_version.",
        ),
    ],
    operator_id: RequiredAsOpt,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the signed package here.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Issue a package and print it (a compact JWS the runner passes when it starts its run)."""
    from interlock._internal.packages.models import PackageRequest
    from interlock._internal.permissions import PACKAGE_ISSUERS, require_any_role

    try:
        raw = yaml.safe_load(spec.read_text(encoding="utf-8"))
        request = PackageRequest.model_validate(raw)
    except OSError as exc:
        fail(f"{spec}: {exc.strerror or exc}", as_json=as_json, error_code="spec_unreadable")
    except (yaml.YAMLError, ValidationError) as exc:
        fail(f"{spec}: {exc}", as_json=as_json, error_code="spec_invalid")
    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, operator_id, as_json=as_json)
        require_any_role(operator, PACKAGE_ISSUERS, request.workflow)
        _load_workflow(il, request.workflow)
        package = il.packages.issue(request, actor=f"operator:{operator.id}")
    if out is not None:
        out.write_text(package.token + "\n", encoding="utf-8")
    if as_json:
        print_json(package_dict(package))
    elif out is None:
        sys.stdout.write(package.token + "\n")
    else:
        console.print(
            f"issued {package.id} for {escape(package.claims['agent'])}; written to {escape(str(out))}"
        )


@app.command("show")
def show(package_id: IdArg, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """A package's claims, state, the run it started and how much of its totals is used."""
    with _opened(db, as_json=as_json) as il:
        package = il.packages.get(package_id)
        usage = il.packages.usage(package_id)
    if as_json:
        print_json(package_dict(package, usage=usage))
        return
    claims = package.claims
    console.print(
        f"[bold]{package.id}[/] {package.state}  {escape(claims['agent'])} in "
        f"{escape(claims['workflow'])}/{escape(claims['environment'])}",
        highlight=False,
    )
    console.print(
        f"  manifest {escape(claims['manifest_version'])}, expires {claims['exp']}", highlight=False
    )
    if claims.get("task"):
        console.print(f"  task: {escape(claims['task'])}", highlight=False)
    for name, grant in claims["tools"].items():
        console.print(f"  tool {escape(name)}: {escape(json.dumps(grant, sort_keys=True))}", highlight=False)
    for key, row in usage.items():
        console.print(f"  used {escape(key)}: {row['used']} of {row['max_total']}", highlight=False)
    if package.run_id:
        console.print(f"  run {package.run_id}")


@app.command("verify")
def verify(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="The package, or a file holding it.")],
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Verify offline with this public key (PEM or 64 hex digits) and no database.",
        ),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a package's signature and expiry (offline with --public-key; else also whether it was used
    or revoked). Exit code 1 when it does not verify."""
    from interlock._internal.packages.signing import verify_package

    token = package
    candidate = Path(package)
    if len(package) < 4096 and candidate.is_file():
        token = candidate.read_text(encoding="utf-8").strip()
    try:
        if public_key is not None:
            result: dict[str, Any] = {"claims": verify_package(token, public_key.read_text(encoding="utf-8"))}
        else:
            with _opened(db, as_json=as_json) as il:
                result = il.packages.verify(token)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    except OSError as exc:
        fail(f"{public_key}: {exc.strerror or exc}", as_json=as_json, error_code="key_unreadable")
    result["valid"] = result.get("state", "issued") == "issued"
    if as_json:
        print_json(result)
    else:
        claims = result["claims"]
        state = f" ({result['state']})" if "state" in result else ""
        console.print(
            f"[green]signature ok[/]{state}: {claims['jti']} for {escape(claims['agent'])} in "
            f"{escape(claims['workflow'])}, tools {escape(', '.join(sorted(claims['tools'])))}",
            highlight=False,
        )
    if not result["valid"]:
        raise SystemExit(1)


@app.command("revoke")
def revoke(
    package_id: IdArg,
    operator_id: RequiredAsOpt,
    reason: Annotated[str | None, typer.Option("--reason", "-m", help="Why, for the audit log.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a package: it starts no run, and a run started with it is denied every next action."""
    from interlock._internal.permissions import PACKAGE_ISSUERS, require_any_role

    with _opened(db, as_json=as_json) as il:
        operator = _operator(il, operator_id, as_json=as_json)
        require_any_role(operator, PACKAGE_ISSUERS, il.packages.get(package_id).claims["workflow"])
        package = il.packages.revoke(package_id, actor=f"operator:{operator.id}", reason=reason)
    if as_json:
        print_json(package_dict(package))
    else:
        console.print(f"revoked {package.id}")


@app.command("public-key")
def public_key(as_json: JsonOpt = False) -> None:
    """The public key runners verify packages with (PEM), from packages.signing_seed."""
    from interlock._internal.packages.signing import PackageKey

    key = PackageKey.from_seed(load_settings().packages.signing_seed)
    if as_json:
        print_json({"key_id": key.key_id, "pem": key.public_pem})
    else:
        sys.stdout.write(key.public_pem)
