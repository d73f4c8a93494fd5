"""Small manifests with systems, bindings and data classes, shared by the systems tests."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "support-triage"

BOUND = """\
name: ledger
version: "1"
owner: ops@example.com
objective: read tickets through per-environment bindings
success_metric: {{name: tickets read}}
environments: [production, staging]
agents:
  - {{id: stage-bot, environment: staging, roles: [clerk]}}
  - {{id: prod-bot, environment: production, roles: [clerk]}}
roles:
  clerk: {{verbs: [read]}}
systems:
  - name: helpdesk
    owner: desk@example.com
    tier: 1
    data_classes: [pii]
    bindings:
      production: {{url: "http://127.0.0.1:{prod}", credential: {{env: DESK_PROD_TOKEN}}}}
      staging: {{url: "http://127.0.0.1:{stage}", credential: {{env: DESK_STAGING_TOKEN}}}}
  - name: archive
    owner: records@example.com
    tier: 3
    bindings:
      production: {{url: "http://127.0.0.1:{prod}/archive", credential: {{env: ARCHIVE_PROD_TOKEN}}}}
tools:
  - name: tickets.get
    verb: read
    system: helpdesk
    returns: [pii]
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string, pattern: "^T-[0-9]+$"}}}}
      required: [ticket_id]
    upstream: {{kind: http, method: GET, url: "/tickets/{{ticket_id}}", body: none}}
  - name: archive.get
    verb: read
    system: archive
    input_schema:
      type: object
      properties: {{ticket_id: {{type: string, pattern: "^T-[0-9]+$"}}}}
      required: [ticket_id]
    upstream: {{kind: http, method: GET, url: "/tickets/{{ticket_id}}", body: none}}
rules:
  allow:
    - {{id: reads, verb: read}}
"""


def bound_manifest(folder: Path, *, prod: int, stage: int) -> Path:
    path = folder / "ledger.yaml"
    path.write_text(BOUND.format(prod=prod, stage=stage), encoding="utf-8")
    return path


def support_copy(folder: Path, *, edit: dict[str, str] | None = None) -> Path:
    """The reference workflow copied into ``folder`` (with its desk and systems file), edited."""
    for name in ("support_desk.py", "golden.yaml"):
        shutil.copy(EXAMPLE / name, folder / name)
    text = (EXAMPLE / "workflow.yaml").read_text(encoding="utf-8")
    for old, new in (edit or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "workflow.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def shared_copy(folder: Path) -> Path:
    """The reference workflow with its systems moved into a shared ``systems.yaml`` it imports."""
    path = support_copy(folder)
    text = path.read_text(encoding="utf-8")
    start = text.index("systems:\n")
    end = text.index("\nagents:\n")
    (folder / "systems.yaml").write_text("# shared by the support workflows\n" + text[start:end] + "\n")
    path.write_text(text[:start] + "imports: [systems.yaml]\n" + text[end:], encoding="utf-8")
    return path
