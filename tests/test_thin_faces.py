"""The faces stay thin: ``api/``, ``ui/`` and ``cli/`` call services and the one permissions module.

They never import one another and never build SQL (no SQLAlchemy, no tables, no raw connections);
``interlock._internal.server`` is where the API and the console are composed. The SDK reaches no
face either. Read from the source, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INTERNAL = Path(__file__).resolve().parents[1] / "src" / "interlock" / "_internal"
FACES = ("api", "ui", "cli")
NO_SQL = (
    "sqlalchemy",
    "interlock._internal.store.tables",
    # Opening a database (``make_engine``) is allowed; running statements on it is not.
    "interlock._internal.store.engine.reading",
    "interlock._internal.store.engine.transaction",
)


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from interlock._internal.store import tables`` names the module in the alias.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _modules(package: str) -> list[Path]:
    return sorted((INTERNAL / package).rglob("*.py"))


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in _modules(package):
        for line, name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(INTERNAL)}:{line}: imports {name}")
    return bad


@pytest.mark.parametrize("face", FACES)
def test_faces_never_import_each_other(face: str) -> None:
    others = tuple(f"interlock._internal.{other}" for other in FACES if other != face)
    assert _violations(face, others) == []


@pytest.mark.parametrize("face", FACES)
def test_faces_never_build_sql(face: str) -> None:
    assert _violations(face, NO_SQL) == []


def test_sdk_reaches_no_face() -> None:
    assert _violations("sdk", tuple(f"interlock._internal.{face}" for face in FACES)) == []


def test_the_scan_sees_lazy_and_aliased_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "def f():\n    from interlock._internal.store import tables as t\n    import sqlalchemy\n",
        encoding="utf-8",
    )
    names = {name for _, name in _imports(sample)}
    assert "interlock._internal.store.tables" in names
    assert "sqlalchemy" in names
