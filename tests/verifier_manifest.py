"""The reference workflow with a verifier agent and model tiers, for the verifier and routing tests."""

from __future__ import annotations

from conftest import SUPPORT_TRIAGE
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text

AGENTS_ANCHOR = "    description: Reads tickets for the weekly report; never writes.\n"
ROLES_ANCHOR = "  analyst:\n    verbs: [read]\n"

VERIFIER_AGENT = (
    "  - id: refund-checker\n"
    "    environment: production\n"
    "    roles: [verifier]\n"
    "    description: Checks flagged refunds and e-mails before a person sees them.\n"
)
VERIFIER_ROLE = "  verifier:\n    verbs: [verify]\n"

VERIFICATION = """
verification:
  verifiers:
    - agent: refund-checker
      rules: [refund-review, customer-email]
  settle:
    - {id: refunds, tool: payments.refund, description: a verifier may settle refunds}
  never_settle:
    - {id: big-refunds-need-a-person, tool: payments.refund, when: "amount > 250"}
    - {id: irreversible-needs-a-person, trait: irreversible}
"""

MODELS = """
models:
  on_unlisted: {on_unlisted}
  tiers:
    - name: small
      models:
        mini-1: {{input: 0.2, output: 0.8}}
    - name: medium
      models:
        mid-1: {{input: 1.0, output: 4.0}}
        mid-2: {{input: 1.5, output: 5.0}}
    - name: large
      models:
        big-1: {{input: 5.0, output: 20.0}}
  tasks:
    extraction: small
    classification: small
    planning: large
    verification: medium
"""


def verifier_text(*, on_unlisted: str = "flag", extra: str = "") -> str:
    text = SUPPORT_TRIAGE.read_text(encoding="utf-8")
    assert AGENTS_ANCHOR in text
    assert ROLES_ANCHOR in text
    text = text.replace(AGENTS_ANCHOR, AGENTS_ANCHOR + VERIFIER_AGENT, 1)
    text = text.replace(ROLES_ANCHOR, ROLES_ANCHOR + VERIFIER_ROLE, 1)
    return text + VERIFICATION + MODELS.format(on_unlisted=on_unlisted) + extra


def verifier_manifest(*, on_unlisted: str = "flag", text: str | None = None) -> LoadedManifest:
    return load_manifest_text(
        text if text is not None else verifier_text(on_unlisted=on_unlisted),
        file=str(SUPPORT_TRIAGE),
        base_dir=SUPPORT_TRIAGE.parent,
    )
