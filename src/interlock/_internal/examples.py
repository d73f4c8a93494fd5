"""Where the reference workflow is: inside the installed package, or in a source checkout.

The repository keeps it once, at ``examples/support-triage``; a built wheel carries a copy at
``interlock/_examples/support-triage`` (see pyproject.toml). An editable install or a checkout has
no copy, so it reads the repository's.
"""

from __future__ import annotations

from pathlib import Path

REFERENCE = "support-triage"


def example_dir(name: str = REFERENCE) -> Path:
    """The directory of a shipped example workflow; the packaged copy wins over a checkout's."""
    package = Path(__file__).resolve().parents[1]  # .../interlock
    candidates = [package / "_examples" / name, package.parents[1] / "examples" / name]
    for candidate in candidates:
        if (candidate / "workflow.yaml").is_file():
            return candidate
    return candidates[0]


def reference_manifest() -> Path:
    """The reference workflow's manifest (``support-triage/workflow.yaml``)."""
    return example_dir() / "workflow.yaml"


__all__ = ["REFERENCE", "example_dir", "reference_manifest"]
