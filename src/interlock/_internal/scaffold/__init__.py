"""``interlock init``: a new workflow a user can grow, written from the templates beside this file.

The files are plain text with ``$name`` for the workflow's name (``string.Template``), so they read
as what they become. They are shipped in the package; nothing here touches the network.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from interlock.exceptions import ConfigError

_TEMPLATES = Path(__file__).parent / "templates"
# Output file name -> template file name.
FILES = {
    "workflow.yaml": "workflow.yaml.tmpl",
    "tools.py": "tools.py.tmpl",
    "golden.yaml": "golden.yaml.tmpl",
    "README.md": "README.md.tmpl",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")


def workflow_name(directory: Path) -> str:
    """A manifest name from a folder's name: letters, digits, ``_ . -``, starting with a letter."""
    raw = directory.resolve().name
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", raw).strip("-_.")
    if name and not name[0].isalpha():
        name = "wf-" + name
    return name[:128] or "my-workflow"


def scaffold(directory: Path, *, name: str | None = None, force: bool = False) -> list[Path]:
    """Write a new workflow into ``directory`` (created if missing); return the files written.

    Refuses to overwrite an existing file unless ``force``.
    """
    name = name or workflow_name(directory)
    if not _NAME.match(name):
        raise ConfigError(
            f"{name!r} is not a workflow name: start with a letter, then at most 127 letters, digits, "
            "'_', '.' or '-'"
        )
    targets = {directory / out: tmpl for out, tmpl in FILES.items()}
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(existing)} already exist(s); pick another folder or pass --force")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, tmpl in targets.items():
            text = Template((_TEMPLATES / tmpl).read_text(encoding="utf-8")).substitute(name=name)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the workflow into {directory}: {exc}") from exc
    return list(targets)


__all__ = ["FILES", "scaffold", "workflow_name"]
