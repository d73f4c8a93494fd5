"""Shared systems files: one YAML file of systems (and data classes) several workflows import.

A manifest says ``imports: [../shared/systems.yaml]``; each file holds ``systems:`` (the same
shape as a manifest's) and optionally ``data_classes:``. Errors in an imported file name that
file and its line. The workflow's version hash covers the imported text too, so changing a
shared system makes a new version of every workflow that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from pydantic import Field, ValidationError

from interlock._internal.manifest.models import Name, Strict, SystemSpec
from interlock.exceptions import ManifestError

if TYPE_CHECKING:
    from interlock._internal.manifest.loader import YamlPath

MAX_IMPORTS = 20


class SystemsFile(Strict):
    systems: list[SystemSpec] = Field(default_factory=list)
    data_classes: list[Name] = Field(default_factory=list)
    description: str | None = None


@dataclass(frozen=True)
class Imported:
    """One imported file: its systems, and where each came from for error messages."""

    file: str
    text: str
    content: SystemsFile
    lines: dict[YamlPath, int] = field(repr=False)


def read_imports(
    paths: list[str], *, base_dir: Path, file: str, lines: dict[YamlPath, int]
) -> list[Imported]:
    """Read and validate every imported systems file, in order."""
    from interlock._internal.manifest.loader import MAX_BYTES, _from_validation_error, _line, _read_yaml

    if len(paths) > MAX_IMPORTS:
        raise ManifestError(
            f"at most {MAX_IMPORTS} imports", file=file, line=_line(lines, ("imports",)), field="imports"
        )
    out: list[Imported] = []
    for index, rel in enumerate(paths):
        at = _line(lines, ("imports", index))

        def where(message: str, at: int | None = at, index: int = index) -> ManifestError:
            return ManifestError(message, file=file, line=at, field=f"imports[{index}]")

        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute():
            raise where(
                "an import is a path relative to the manifest, so workflows move with their shared files"
            )
        path = base_dir / rel
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise where(f"cannot read systems file '{rel}': {exc.strerror}") from exc
        if len(raw) > MAX_BYTES:
            raise where(f"systems file '{rel}' is larger than {MAX_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise where(f"systems file '{rel}' is not valid UTF-8") from exc
        data, file_lines = _read_yaml(text, rel)
        if not isinstance(data, dict):
            raise ManifestError("a systems file is a YAML mapping (systems: [...])", file=rel, line=1)
        try:
            content = SystemsFile.model_validate(data)
        except ValidationError as exc:
            raise _from_validation_error(exc, data, file_lines, rel) from None
        out.append(Imported(file=rel, text=text, content=content, lines=file_lines))
    return out


__all__ = ["Imported", "SystemsFile", "read_imports"]
