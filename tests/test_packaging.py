"""What the wheel carries agrees with what the code looks for (CI builds and installs the real
wheel and runs the demo from it; this keeps the two ends named alike)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import interlock
from interlock._internal.examples import REFERENCE, example_dir, reference_manifest

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_reference_workflow_where_the_demo_looks() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    force = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force == {f"examples/{REFERENCE}": f"interlock/_examples/{REFERENCE}"}
    assert (REPO / "examples" / REFERENCE / "workflow.yaml").is_file()
    # In a checkout (no packaged copy) the repository's own folder is used: one source of truth.
    package = Path(interlock.__file__).resolve().parent
    assert not (package / "_examples").exists(), "a copy of the examples inside src/ would drift"
    assert example_dir() == REPO / "examples" / REFERENCE
    assert reference_manifest().is_file()


def test_one_version() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["hatch"]["version"]["path"] == "src/interlock/__init__.py"
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog or f"## [{interlock.__version__}]" in changelog
