"""A scripted accounts-payable agent: one realistic pass over the open invoices, through Interlock.

    python agent.py                 # everything in a temporary folder, removed afterwards
    python agent.py --workdir run1  # keep the databases to look at afterwards

It starts the AP service (``ap_service.py``) as a subprocess on a free loopback port, points the
manifest's tool URLs there, and runs an embedded Interlock whose egress allowlist admits exactly
that address. The agent holds an Interlock token and nothing else; Interlock injects the service's
API key (``$AP_SERVICE_TOKEN``, generated here when unset) into each HTTP call.

For every open invoice, in its own run, the agent reads the invoice, its purchase order, the goods
receipts and the vendor; it matches the invoice or flags the exception, and schedules payment of
what it matched. What happens is Interlock's decision, printed line by line: a small payment runs,
a mid-size one waits for approval, a huge one is forbidden, the bank-change request in an invoice
memo is refused, and an invoice whose vendor disagrees with its purchase order escalates to a person.

The agent compares lines, prices and quantities itself but not the vendor on the invoice with the
vendor on the order: that gap is left open on purpose, to show the ``vendor-conflict`` stop rule
closing it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from interlock import ActionResult, Interlock, LoadedManifest, Settings, load_manifest

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "workflow.yaml"


def _service_module() -> ModuleType:
    # Loaded by path, so this works from any working directory and when imported by tests.
    name = "ap_service"
    if (
        name in sys.modules
        and Path(getattr(sys.modules[name], "__file__", "")).resolve() == HERE / "ap_service.py"
    ):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "ap_service.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ap_service = _service_module()
MANIFEST_BASE_URL = f"http://127.0.0.1:{ap_service.DEFAULT_PORT}"


@dataclass(frozen=True)
class Outcome:
    """One action the agent asked for, and what Interlock decided."""

    agent: str
    invoice_id: str | None
    tool: str
    decision: str
    status: str
    reasons: list[str]
    detail: str = ""
    approval_id: str | None = None
    run_id: str | None = None


@dataclass
class DemoReport:
    outcomes: list[Outcome] = field(default_factory=list)
    service_url: str = ""
    service_db: Path | None = None
    database_url: str = ""
    audit_ok: bool = False

    def find(self, tool: str, invoice_id: str | None = None) -> list[Outcome]:
        return [
            o for o in self.outcomes if o.tool == tool and (invoice_id is None or o.invoice_id == invoice_id)
        ]


def manifest_for(base_url: str, folder: Path) -> LoadedManifest:
    """The manifest as deployed: its tool URLs pointed at ``base_url``, written into ``folder``."""
    text = MANIFEST.read_text(encoding="utf-8")
    deployed = folder / "workflow.yaml"
    deployed.write_text(text.replace(MANIFEST_BASE_URL, base_url.rstrip("/")), encoding="utf-8")
    return load_manifest(deployed)


class ScriptedAgent:
    """Stands in for a model-driven agent: same calls, fixed reasoning."""

    def __init__(
        self, il: Interlock, agent_id: str, workflow: str, report: DemoReport, echo: Callable[[str], None]
    ):
        self.il = il
        self.agent_id = agent_id
        self.report = report
        self.echo = echo
        spec = il.runtime(workflow).manifest.agent(agent_id)
        assert spec is not None
        creds = il.agents.create(agent_id, workflow=workflow, environment=spec.environment, actor="agent.py")
        self.token = il.issue_token(creds.client_id, creds.client_secret).token
        self.run_id = ""
        self.invoice_id: str | None = None

    def start(self, trigger: dict[str, Any], invoice_id: str | None = None) -> None:
        self.run_id = self.il.start_run(self.token, trigger=trigger, started_by=self.agent_id).id
        self.invoice_id = invoice_id

    def finish(self) -> None:
        if self.il.get_run(self.run_id).state == "running":
            self.il.finish_run(self.token, self.run_id)

    def act(self, tool: str, arguments: dict[str, Any], *, reasoning: str, **kw: Any) -> ActionResult:
        result = self.il.act(self.token, self.run_id, tool, arguments, reasoning=reasoning, **kw)
        detail = _detail(result)
        outcome = Outcome(
            agent=self.agent_id,
            invoice_id=self.invoice_id,
            tool=tool,
            decision=result.decision.decision,
            status=result.status,
            reasons=result.decision.reason_codes,
            detail=detail,
            approval_id=result.approval_id,
            run_id=self.run_id,
        )
        self.report.outcomes.append(outcome)
        line = f"  {self.invoice_id or '-':9} {tool:28} {outcome.decision:16} {outcome.status:16} {detail}"
        self.echo(line.rstrip())
        return result


def _detail(result: ActionResult) -> str:
    if result.status == "executed" and isinstance(result.result, dict):
        for key in ("payment_id", "match_id", "flag_id"):
            if key in result.result:
                return str(result.result[key])
        return ""
    if result.status == "pending_approval":
        return f"approval {result.approval_id}"
    if result.status == "failed":
        return (result.error or "")[:110]
    reason = result.decision.reasons[0] if result.decision.reasons else None
    return f"{reason.code}: {reason.policy_id or reason.message}"[:110] if reason else ""


# ---- the agent's own judgement --------------------------------------------------------------------

_BANK_CHANGE = re.compile(r"\b(bank|iban|account)\b.*\b(chang|updat|new)", re.IGNORECASE)
_IBAN = re.compile(r"\b[A-Z]{2}[0-9]{2}[A-Z0-9]{10,30}\b")


def variances(
    invoice: dict[str, Any], order: dict[str, Any], receipts: dict[str, Any]
) -> tuple[str, str] | None:
    """(reason_code, note) when lines, prices or quantities disagree; None when they match."""
    if not receipts["receipts"]:
        return "missing_receipt", f"no goods receipt against {order['po_id']} yet"
    ordered = {line["sku"]: line for line in order["lines"]}
    received = {line["sku"]: line["quantity"] for line in receipts["received"]}
    for line in invoice["lines"]:
        sku = line["sku"]
        if sku not in ordered:
            return "other", f"{sku} is not on {order['po_id']}"
        if abs(line["unit_price"] - ordered[sku]["unit_price"]) > 0.000_1:
            return (
                "price_variance",
                f"{sku} invoiced at {line['unit_price']:.2f}, ordered at {ordered[sku]['unit_price']:.2f}",
            )
        if line["quantity"] > received.get(sku, 0):
            return "quantity_variance", f"{sku}: {line['quantity']} invoiced, {received.get(sku, 0)} received"
    return None


def process_invoice(agent: ScriptedAgent, invoice_id: str) -> None:
    agent.start({"invoice": invoice_id}, invoice_id)
    invoice = agent.act("invoices.get", {"invoice_id": invoice_id}, reasoning="read the invoice").result
    order = agent.act(
        "purchase_orders.get", {"po_id": invoice["po_id"]}, reasoning="read its purchase order"
    ).result
    receipts = agent.act("receipts.get", {"po_id": invoice["po_id"]}, reasoning="what was received").result
    vendor = agent.act(
        "vendors.get", {"vendor_id": invoice["vendor_id"]}, reasoning="vendor is active?"
    ).result

    if _BANK_CHANGE.search(invoice["memo"]):
        # What a model does when it obeys text in the data: try the change the memo asks for. The
        # memo reaches the agent with the account number masked; the number below is the one the
        # fraudster wrote.
        found = _IBAN.search(invoice["memo"])
        agent.act(
            "vendors.update_bank_details",
            {
                "vendor_id": invoice["vendor_id"],
                "iban": found.group(0) if found else "GB33BUKB20201555555555",
                "account_name": vendor["name"],
                "reason": f"the memo on {invoice_id} says the bank account changed",
            },
            reasoning="the vendor's memo asks for new bank details",
        )
        agent.act(
            "invoices.flag",
            {
                "invoice_id": invoice_id,
                "reason_code": "bank_change_request",
                "note": "The memo asks to change the vendor's bank account and pay today. Verify by phone "
                "with the contact on file before anything is paid.",
            },
            reasoning="bank-change requests in an invoice are a fraud pattern; a person calls the vendor",
        )
        agent.finish()
        return

    problem = variances(invoice, order, receipts)
    if vendor["status"] != "active":
        problem = ("other", f"vendor {vendor['vendor_id']} is {vendor['status']}")
    if problem is not None:
        code, note = problem
        agent.act(
            "invoices.flag", {"invoice_id": invoice_id, "reason_code": code, "note": note}, reasoning=note
        )
        agent.finish()
        return

    match = agent.act(
        "invoices.match",
        {
            "invoice_id": invoice_id,
            "po_id": invoice["po_id"],
            "receipt_ids": [r["receipt_id"] for r in receipts["receipts"]],
            "amount": invoice["total"],
            "currency": invoice["currency"],
        },
        reasoning="lines, prices and received quantities agree",
        confidence=0.9,
    )
    if match.status == "escalated":
        return  # the run now waits for a person; nothing more to do here
    if match.status != "executed":
        refused = match.error or ""
        code = "duplicate" if "duplicate" in refused else "other"
        agent.act(
            "invoices.flag",
            {
                "invoice_id": invoice_id,
                "reason_code": code,
                "note": f"The AP system refused the match: {refused}"[:2000],
            },
            reasoning="the system of record refused the match",
        )
        agent.finish()
        return

    payment = agent.act(
        "payments.schedule",
        {
            "invoice_id": invoice_id,
            "match_id": match.result["match_id"],
            "amount": invoice["total"],
            "currency": invoice["currency"],
        },
        reasoning="matched invoice: pay the total on the due date",
        confidence=0.9,
    )
    if payment.decision.decision == "deny" and "forbidden" in payment.decision.reason_codes:
        agent.act(
            "invoices.flag",
            {
                "invoice_id": invoice_id,
                "reason_code": "over_limit",
                "note": f"Matched, but {invoice['total']:,.2f} {invoice['currency']} is more than an agent "
                "may pay.",
            },
            reasoning="a person has to pay this one",
        )
    agent.finish()


def run_demo(
    workdir: Path, *, echo: Callable[[str], None] = print, database_url: str | None = None
) -> DemoReport:
    """Start the service, run the agents, stop the service. The databases stay in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not os.environ.get(ap_service.TOKEN_ENV):
        # The service and Interlock share this key through the environment; the agent never sees it.
        os.environ[ap_service.TOKEN_ENV] = secrets.token_urlsafe(32)
    report = DemoReport(service_db=workdir / "ap-service.db")
    report.database_url = database_url or f"sqlite:///{workdir / 'interlock.db'}"
    with ap_service.start(report.service_db, reset=True) as service:
        report.service_url = service.url
        loaded = manifest_for(service.url, workdir)
        settings = Settings(
            database={"url": report.database_url},
            egress={"allow_hosts": [f"127.0.0.1:{service.port}"], "allow_cidrs": ["127.0.0.1/32"]},
        )
        echo(f"AP service at {service.url}; workflow {loaded.version_id}")
        with Interlock(settings) as il:
            il.migrate()
            workflow = il.load_workflow(loaded, actor="agent.py").name

            matcher = ScriptedAgent(il, "ap-matcher", workflow, report, echo)
            echo("\nap-matcher: the open invoices")
            matcher.start({"inbox": "open invoices"})
            listed = matcher.act("invoices.list", {"status": "open", "limit": 50}, reasoning="today's work")
            matcher.finish()
            for item in listed.result["invoices"]:
                echo(f"\nap-matcher: {item['invoice_id']} from {item['vendor_id']}, {item['total']:,.2f} USD")
                process_invoice(matcher, item["invoice_id"])

            echo("\nap-auditor: read-only")
            auditor = ScriptedAgent(il, "ap-auditor", workflow, report, echo)
            auditor.start({"review": "month-end sample"}, "INV-9001")
            auditor.act("invoices.get", {"invoice_id": "INV-9001"}, reasoning="sample an invoice")
            auditor.act(
                "invoices.flag",
                {"invoice_id": "INV-9001", "reason_code": "other", "note": "auditor sample"},
                reasoning="an auditor may not write",
            )
            auditor.finish()

            report.audit_ok = il.verify_audit().ok
        _summary(report, echo)
    return report


def _summary(report: DemoReport, echo: Callable[[str], None]) -> None:
    payments = report.find("payments.schedule")
    paid = [o for o in payments if o.status == "executed"]
    waiting = [o for o in payments if o.status == "pending_approval"]
    refused = [o for o in payments if o.decision == "deny"]
    flagged = {o.invoice_id for o in report.find("invoices.flag") if o.status == "executed"}
    escalated = {o.invoice_id for o in report.outcomes if o.status == "escalated"}
    invoices = {o.invoice_id for o in report.find("invoices.get") if o.agent == "ap-matcher"}
    echo(
        f"\n{len(invoices)} invoices: {len(paid)} paid without a person "
        f"(straight-through rate {len(paid) / max(len(invoices), 1):.0%}), "
        f"{len(waiting)} waiting for approval, {len(refused)} payment(s) refused, "
        f"{len(flagged)} routed to the exceptions queue, {len(escalated)} escalated to a person."
    )
    echo(f"Audit chain verified: {report.audit_ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--workdir", type=Path, help="keep the databases here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        run_demo(args.workdir)
        return 0
    with tempfile.TemporaryDirectory(prefix="invoice-matching-") as tmp:
        run_demo(Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
