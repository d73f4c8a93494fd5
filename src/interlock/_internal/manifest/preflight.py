"""What a manifest points at, checked before anything runs: ``workflow validate`` and ``serve``
import every Python callable, open the files it names and find every MCP server's command, so a
typo fails at deploy time with ``file:line`` instead of as a 502 on the first call."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from interlock._internal.gateway.transports.python import PythonTransport
from interlock._internal.manifest.loader import LoadedManifest
from interlock._internal.manifest.models import PythonUpstream
from interlock.exceptions import ConfigError, ManifestError


def _problem(loaded: LoadedManifest, message: str, *path: str | int) -> ManifestError:
    field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
    file = str(loaded.path) if loaded.path is not None else None
    line = loaded.line_of(*path)
    return ManifestError(message, file=file, line=line, field=field, code="reference_missing")


def _command_found(command: str, base_dir: Path) -> bool:
    if os.sep in command or (os.altsep and os.altsep in command):
        path = Path(command) if Path(command).is_absolute() else base_dir / command
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(command) is not None


def check_references(loaded: LoadedManifest) -> list[ManifestError]:
    """Every reference the manifest makes that does not resolve, located at its line."""
    m = loaded.manifest
    problems: list[ManifestError] = []
    transport = PythonTransport(base_dir=loaded.base_dir)
    try:
        for i, tool in enumerate(m.tools):
            if isinstance(tool.upstream, PythonUpstream):
                try:
                    transport.resolve(tool.upstream.callable)
                except ConfigError as exc:
                    message = str(exc).removeprefix("upstream.callable: ")
                    problems.append(_problem(loaded, message, "tools", i, "upstream", "callable"))
    finally:
        transport.close()
    for i, server in enumerate(m.mcp_servers):
        if server.command and not _command_found(server.command[0], loaded.base_dir):
            problems.append(
                _problem(
                    loaded,
                    f"command {server.command[0]!r} not found on PATH; install the server or give its path",
                    "mcp_servers",
                    i,
                    "command",
                )
            )
    if m.evaluation is not None:
        golden = loaded.base_dir / m.evaluation.golden_set
        if not golden.is_file():
            problems.append(
                _problem(loaded, f"{m.evaluation.golden_set}: no such file", "evaluation", "golden_set")
            )
    for i, policy in enumerate(m.policies):
        if not (loaded.base_dir / policy).is_file():
            problems.append(_problem(loaded, f"{policy}: no such file", "policies", i))
    return problems


__all__ = ["check_references"]
