"""``interlock serve``: the HTTP server (REST API, MCP gateway, console) on uvicorn."""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from interlock._internal.cli.common import console, fail, fail_from, load_settings, print_json
from interlock.exceptions import ConfigError, InterlockError, ManifestError

if TYPE_CHECKING:
    from interlock._internal.settings import Settings

# How each setting is spelled in the environment and in interlock.toml, for the refusal message.
_SETTING_HINTS = {
    "identity.signing_seed": ("INTERLOCK_IDENTITY__SIGNING_SEED", "[identity] signing_seed"),
    "audit.signing_seed": ("INTERLOCK_AUDIT__SIGNING_SEED", "[audit] signing_seed"),
}


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def base_url(settings: Settings, host: str, port: int) -> str:
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def unsafe_defaults_message(host: str, names: list[str]) -> str:
    lines = [
        f"refusing to listen on {host}: these secrets still have their shipped defaults, which anyone can "
        "read in the source, so anyone could mint tokens or forge audit signatures:"
    ]
    for name in names:
        env, toml = _SETTING_HINTS.get(name, (f"INTERLOCK_{name.upper().replace('.', '__')}", name))
        lines.append(f"  - {name}: set {env} or {toml} in interlock.toml to a long random value")
    lines.append("Every replica must share the same values. Or listen on 127.0.0.1 only.")
    return "\n".join(lines)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else happens: a busy port stops ``serve`` before
    it migrates, loads or prints a sign-in link that would never work."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}: {exc.strerror}", code="bad_host") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        if family in (socket.AF_INET, socket.AF_INET6):
            # Accepted connections inherit it. Without it a response written in two parts (head,
            # then body; every SSE event) waits for the client's delayed ACK: about 40 ms per
            # request on a kept-alive connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = "; pick another with --port" if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}{hint}",
            code="port_in_use" if exc.errno == errno.EADDRINUSE else "cannot_listen",
        ) from exc
    sock.set_inheritable(True)
    return sock


def serve(
    manifest: Annotated[
        list[Path] | None,
        typer.Option(
            "--manifest", "-m", help="Workflow manifest to serve; repeat for several (default: settings)."
        ),
    ] = None,
    db: Annotated[str | None, typer.Option("--db", help="Database URL (default: from settings).")] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface to listen on (default 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="Port (default 8000).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=64,
            help="Processes serving the port, one per core to use (default: server.workers, 1).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    as_json: Annotated[bool, typer.Option("--json", help="Print the URLs as JSON, then serve.")] = False,
) -> None:
    """Validate the manifests, migrate the database, print the URLs, and serve until stopped
    (SIGTERM or Ctrl-C: requests in flight finish first)."""
    settings = load_settings(db)
    if manifest:
        settings = settings.model_copy(update={"manifests": list(manifest)})
    host = host or settings.server.host
    port = port or settings.server.port
    workers = workers or settings.server.workers
    if workers != settings.server.workers:  # the workers' MCP gateway reads it
        server = settings.server.model_copy(update={"workers": workers})
        settings = settings.model_copy(update={"server": server})
    unsafe = settings.default_secrets_in_use()
    if unsafe and not is_loopback(host):
        fail(
            unsafe_defaults_message(host, unsafe),
            code=2,
            as_json=as_json,
            error_code="default_secrets_in_use",
        )
    if not settings.manifests:
        fail(
            "no workflow to serve: pass --manifest PATH, or list manifests in interlock.toml "
            "(manifests = [...]) or INTERLOCK_MANIFESTS",
            code=2,
            as_json=as_json,
            error_code="no_manifest",
        )
    missing = [str(p) for p in settings.manifests if not Path(p).is_file()]
    if missing:
        fail(f"{', '.join(missing)}: no such file", code=2, as_json=as_json, error_code="manifest_not_found")
    try:
        sock = bind(host, port)
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    try:
        _serve(
            settings,
            sock,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            unsafe=unsafe,
            as_json=as_json,
        )
    finally:
        sock.close()


def _preflight(settings: Settings, *, as_json: bool) -> None:
    """Load each manifest and check what it points at (callables, files, MCP commands)."""
    from interlock._internal.manifest.loader import load_manifest
    from interlock._internal.manifest.preflight import check_references

    problems: list[ManifestError] = []
    try:
        for path in settings.manifests:
            problems += check_references(load_manifest(path))
    except InterlockError as exc:
        fail_from(exc, as_json=as_json)
    if problems:
        fail("\n".join(str(p) for p in problems), as_json=as_json, error_code=problems[0].code)


def _serve(
    settings: Settings,
    sock: socket.socket,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    unsafe: list[str],
    as_json: bool,
) -> None:
    _preflight(settings, as_json=as_json)

    from uvicorn.config import STARTUP_FAILURE

    from interlock._internal.operations.signin import local_admin_link
    from interlock._internal.server import MCP_PATH, UI_PATH, create_app, serve_one, serve_workers
    from interlock._internal.service import Interlock
    from interlock._internal.store.database import database_label

    interlock = Interlock(settings)
    try:
        # Before listening: a bad manifest or an unreachable database stops here, with file:line.
        interlock.start()
    except InterlockError as exc:
        interlock.close()
        fail_from(exc, as_json=as_json)
    url = base_url(settings, host, port)
    urls = {
        "api": f"{url}/v1",
        "mcp": f"{url}{MCP_PATH}",
        "ui": f"{url}{UI_PATH}",
        "openapi": f"{url}/openapi.json",
    }
    # A one-time link for the local admin (a code kept in the database, not an API token).
    try:
        sign_in = local_admin_link(interlock, console=urls["ui"])
    except InterlockError as exc:
        interlock.close()
        fail_from(exc, as_json=as_json)
    if sign_in is not None:
        urls["ui_sign_in"] = sign_in
    workflows = [{"name": rt.name, "version": rt.manifest.version} for rt in interlock.workflows]
    if as_json:
        print_json({**urls, "workflows": workflows, "workers": workers})
    else:
        names = ", ".join(f"{w['name']} {w['version']}" for w in workflows)
        console.print(f"Interlock serving [bold]{names}[/]", highlight=False)
        for label, key in (("API", "api"), ("MCP", "mcp"), ("console", "ui"), ("OpenAPI", "openapi")):
            console.print(f"  {label:<8} {urls[key]}", highlight=False)
        console.print(f"  database {database_label(settings.database)}", highlight=False, soft_wrap=True)
        if workers > 1:
            console.print(f"  workers  {workers} processes on one port", highlight=False)
        if sign_in is not None:
            console.print(
                f"  sign in  {sign_in}  (local admin; one use, within 10 minutes)",
                highlight=False,
                soft_wrap=True,
            )
        if unsafe:
            console.print(
                f"  [yellow]development secrets in use ({', '.join(unsafe)}); fine on loopback only[/]",
                highlight=False,
            )
    sys.stdout.flush()  # the URLs now, not when a pipe's buffer fills
    if workers > 1:
        # The workers build their own; this process only supervises them.
        interlock.close()
        serve_workers(settings, sock, workers=workers, log_level=log_level)
        return
    try:
        # The socket bound first, before any work: the port cannot be taken in between.
        if not serve_one(create_app(interlock=interlock), sock, log_level=log_level):
            raise SystemExit(STARTUP_FAILURE)
    finally:
        interlock.close()
