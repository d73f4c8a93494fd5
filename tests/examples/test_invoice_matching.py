"""The invoice-matching example: a real AP service over HTTP, its manifest, the scripted agent, evals.

Everything runs on 127.0.0.1: the service is started as a subprocess on a free port for each
test that needs it, and Interlock reaches it through its egress allowlist with an injected key.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema
import pytest
from sqlalchemy import MetaData, create_engine, select

from interlock import Interlock, Settings, load_manifest
from interlock._internal.evals.golden import load_golden
from interlock._internal.evals.runner import run_golden
from interlock._internal.gateway.transports.python import PythonTransport
from interlock._internal.manifest.loader import load_manifest_text
from servers import free_port

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "invoice-matching"
MANIFEST = EXAMPLE_DIR / "workflow.yaml"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"invoice_matching_{name}", EXAMPLE_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


agent = _load("agent")
ap = agent.ap_service  # the very module agent.py drives


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "test-" + secrets.token_hex(20)
    monkeypatch.setenv(ap.TOKEN_ENV, key)
    return key


@pytest.fixture
def service(api_key: str, tmp_path: Path) -> Iterator[Any]:
    with ap.start(tmp_path / "ap-service.db") as svc:
        yield svc


def _tools() -> dict[str, Any]:
    return {tool.name: tool for tool in load_manifest(MANIFEST).manifest.tools}


def _stored_text(url: str) -> Iterator[tuple[str, str]]:
    """Every row of every table of a database, as text: (table, row)."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    yield table.name, json.dumps([str(v) for v in row])
    finally:
        engine.dispose()


# ---- the manifest ---------------------------------------------------------------------------------


def test_manifest_validates_and_says_what_the_brief_says() -> None:
    m = load_manifest(MANIFEST).manifest
    assert m.name == "invoice-matching"
    assert m.success_metric.name == "straight-through match rate"
    assert {a.id: a.roles for a in m.agents} == {"ap-matcher": ["ap_clerk"], "ap-auditor": ["auditor"]}
    assert m.roles["auditor"].verbs == ["read"]
    tools = {t.name: t for t in m.tools}
    assert {name: (t.verb, sorted(t.traits)) for name, t in tools.items()} == {
        "invoices.list": ("read", []),
        "invoices.get": ("read", []),
        "purchase_orders.get": ("read", []),
        "receipts.get": ("read", []),
        "vendors.get": ("read", ["pii"]),
        "invoices.match": ("update", ["write"]),
        "invoices.flag": ("update", ["write"]),
        "payments.schedule": ("execute", ["money"]),
        "vendors.update_bank_details": ("update", ["money", "pii", "write"]),
    }
    for tool in m.tools:
        assert tool.upstream is not None
        assert tool.upstream.kind == "http"
        assert tool.upstream.url.startswith(agent.MANIFEST_BASE_URL + "/"), tool.name
        assert tool.credential is not None
        assert tool.credential.env == "AP_SERVICE_TOKEN"
        assert tool.output_schema is not None
        assert tool.output_schema["additionalProperties"] is False
        assert tool.input_schema["additionalProperties"] is False
    review = {r.id: r for r in m.rules.require_approval}
    assert review["large-payment-review"].quorum == 2
    assert m.approvals.quorum == 1
    kinds = {r.id: r.kind for r in m.stop_rules}
    assert set(kinds.values()) == {"conflicting_records", "missing_data", "low_confidence"}
    conflict = next(r for r in m.stop_rules if r.kind == "conflicting_records")
    assert conflict.sources == ["invoices.get", "purchase_orders.get"]
    assert conflict.key == "vendor_id"
    assert m.pause_owners
    assert m.budgets.per_run.max_tool_calls is not None


def test_manifest_port_is_the_one_the_service_defaults_to() -> None:
    assert f"http://127.0.0.1:{ap.DEFAULT_PORT}" == agent.MANIFEST_BASE_URL


@pytest.mark.parametrize(
    ("tool", "arguments", "decision"),
    [
        ("payments.schedule", {"amount": 1000}, "allow"),
        ("payments.schedule", {"amount": 1000.01}, "require_approval"),
        ("payments.schedule", {"amount": 10000}, "require_approval"),
        ("payments.schedule", {"amount": 10000.01}, "deny"),
        ("vendors.update_bank_details", None, "deny"),
    ],
)
def test_payment_and_bank_rules(
    tool: str, arguments: dict[str, Any] | None, decision: str, tmp_path: Path
) -> None:
    args: dict[str, Any]
    if tool == "payments.schedule":
        args = {"invoice_id": "INV-9001", "match_id": "M-1", "currency": "USD", **(arguments or {})}
    else:
        args = {"vendor_id": "V-1006", "iban": "GB33BUKB20201555555555", "account_name": "x", "reason": "y"}
    with Interlock(Settings(database={"url": f"sqlite:///{tmp_path / 'il.db'}"})) as il:
        il.migrate()
        il.load_workflow(MANIFEST)
        got = il.check(workflow="invoice-matching", agent="ap-matcher", tool=tool, arguments=args)
    assert got.decision == decision


# ---- the service ----------------------------------------------------------------------------------


def test_service_requires_the_api_key(service: Any, api_key: str) -> None:
    assert httpx.get(service.url + "/health").json() == {"status": "ok"}
    anonymous = httpx.get(service.url + "/invoices")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.get(service.url + "/invoices", headers={"Authorization": "Bearer not-the-key-at-all"})
    assert wrong.status_code == 401
    right = httpx.get(service.url + "/invoices", headers={"Authorization": f"Bearer {api_key}"})
    assert right.status_code == 200
    callers = [row["caller"] for row in ap.request_log(service.db)]
    assert callers == ["anonymous", "rejected", ap.caller_fingerprint(api_key)]
    for _table, row in _stored_text(f"sqlite:///{service.db}"):
        assert api_key not in row


def test_service_will_not_start_without_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AP_SERVICE_TOKEN"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE_DIR / "ap_service.py"), "--port", "0", "--db", str(tmp_path / "x.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "AP_SERVICE_TOKEN" in done.stderr


def test_seeded_data_matches_the_output_schemas(service: Any, api_key: str) -> None:
    tools = _tools()
    client = httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {api_key}"})

    def read(tool: str, path: str, **params: Any) -> dict[str, Any]:
        response = client.get(path, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        schema = tools[tool].output_schema
        jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(body)
        return body

    with client:
        listed = read("invoices.list", "/invoices", status="open", limit=100)
        assert [i["invoice_id"] for i in listed["invoices"]] == [f"INV-90{n:02d}" for n in range(1, 13)]
        totals = {i["invoice_id"]: i["total"] for i in listed["invoices"]}
        assert totals["INV-9001"] == 500
        assert totals["INV-9002"] == 3000
        assert totals["INV-9003"] == 20000
        for item in listed["invoices"]:
            invoice = read("invoices.get", f"/invoices/{item['invoice_id']}")
            order = read("purchase_orders.get", f"/purchase_orders/{invoice['po_id']}")
            read("receipts.get", f"/purchase_orders/{invoice['po_id']}/receipts")
            read("vendors.get", f"/vendors/{invoice['vendor_id']}")
            # Only INV-9004 disagrees with its order about the vendor.
            assert (invoice["vendor_id"] != order["vendor_id"]) == (item["invoice_id"] == "INV-9004")
        assert read("receipts.get", "/purchase_orders/PO-5007/receipts")["receipts"] == []
        assert client.get("/invoices/INV-9999").status_code == 404


def test_service_keeps_its_own_controls(service: Any, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=service.url, headers=headers) as client:

        def match(invoice: str, po: str, receipts: list[str], amount: float) -> httpx.Response:
            body = {"po_id": po, "receipt_ids": receipts, "amount": amount, "currency": "USD"}
            return client.post(f"/invoices/{invoice}/match", json=body)

        assert "price variance" in match("INV-9005", "PO-5005", ["GR-7005"], 700).json()["message"]
        assert "quantity variance" in match("INV-9006", "PO-5006", ["GR-7006"], 850).json()["message"]
        assert "vendor mismatch" in match("INV-9004", "PO-5004", ["GR-7004"], 850).json()["message"]
        assert match("INV-9001", "PO-5001", ["GR-7002"], 500).status_code == 409  # another order's receipt
        assert match("INV-9001", "PO-5001", ["GR-7001"], 500.001).status_code == 422
        ok = match("INV-9001", "PO-5001", ["GR-7001"], 500)
        assert ok.status_code == 201
        assert ok.json()["match_id"] == "M-1"
        assert "duplicate" in match("INV-9011", "PO-5001", ["GR-7001"], 500).json()["message"]

        def pay(amount: float, key: str, match_id: str = "M-1", invoice: str = "INV-9001") -> httpx.Response:
            body = {"invoice_id": invoice, "match_id": match_id, "amount": amount, "currency": "USD"}
            return client.post("/payments", json=body, headers={"Idempotency-Key": key})

        assert pay(450, "k0").status_code == 409  # not the invoice total
        assert pay(500, "k0", match_id="M-9").status_code == 409  # not its match
        assert pay(450, "k0", invoice="INV-9007").status_code == 409  # never matched
        first = pay(500, "k1")
        assert first.status_code == 201
        assert first.json()["status"] == "scheduled"
        again = pay(500, "k1")
        assert again.status_code == 200
        assert again.json() == first.json()
        assert pay(500, "k2").status_code == 409  # paid once only
        flag = client.post(
            "/invoices/INV-9006/flag", json={"reason_code": "quantity_variance", "note": "6 of 10"}
        )
        assert flag.status_code == 201
        assert flag.json()["status"] == "on_hold"
        assert (
            client.post("/invoices/INV-9006/flag", json={"reason_code": "nope", "note": "x"}).status_code
            == 422
        )
    state = ap.snapshot(service.db)
    assert [p["invoice_id"] for p in state["payments"]] == ["INV-9001"]
    assert state["invoices"]["INV-9001"]["status"] == "scheduled"
    assert state["invoices"]["INV-9006"]["status"] == "on_hold"
    ap.reset(service.db)
    fresh = ap.snapshot(service.db)
    assert fresh["payments"] == []
    assert fresh["matches"] == []
    assert fresh["flags"] == []
    assert {i["status"] for i in fresh["invoices"].values()} == {"open"}


# ---- the scripted agent, end to end over HTTP -------------------------------------------------------


def _outcome(report: Any, tool: str, invoice: str, agent_id: str = "ap-matcher") -> Any:
    found = [o for o in report.find(tool, invoice) if o.agent == agent_id]
    assert len(found) == 1, (tool, invoice, found)
    return found[0]


def test_scripted_agent_run_end_to_end(api_key: str, db_url: str, tmp_path: Path) -> None:
    lines: list[str] = []
    report = agent.run_demo(tmp_path / "demo", echo=lines.append, database_url=db_url)
    assert report.service_url.startswith("http://127.0.0.1:")

    # A clean invoice is matched and its 500 USD payment runs alone.
    match = _outcome(report, "invoices.match", "INV-9001")
    assert (match.decision, match.status, match.detail) == ("allow", "executed", "M-1")
    small = _outcome(report, "payments.schedule", "INV-9001")
    assert (small.decision, small.status) == ("allow", "executed")
    boundary = _outcome(report, "payments.schedule", "INV-9009")
    assert (boundary.decision, boundary.status) == ("allow", "executed")
    # 3,000 waits for one approver, 7,500 and 10,000 for two.
    mid = _outcome(report, "payments.schedule", "INV-9002")
    assert (mid.decision, mid.status) == ("require_approval", "pending_approval")
    assert mid.approval_id
    # 20,000 is forbidden; the agent then routes it to a person.
    huge = _outcome(report, "payments.schedule", "INV-9003")
    assert (huge.decision, huge.status, huge.reasons) == ("deny", "denied", ["forbidden"])
    assert "forbid:payment-hard-limit" in huge.detail
    assert _outcome(report, "invoices.flag", "INV-9003").status == "executed"
    # The bank change the memo asks for is forbidden.
    bank = _outcome(report, "vendors.update_bank_details", "INV-9010")
    assert (bank.decision, bank.reasons) == ("deny", ["forbidden"])
    assert "forbid:no-bank-changes" in bank.detail
    # Invoice and purchase order disagree on the vendor: the match escalates to a person.
    conflict = _outcome(report, "invoices.match", "INV-9004")
    assert (conflict.decision, conflict.status, conflict.reasons) == (
        "escalate",
        "escalated",
        ["conflicting_records"],
    )
    # Variances, the missing receipt and the duplicate are flagged, not matched.
    for invoice, code in [
        ("INV-9005", "price_variance"),
        ("INV-9006", "quantity_variance"),
        ("INV-9007", "missing_receipt"),
        ("INV-9011", "duplicate"),
    ]:
        assert _outcome(report, "invoices.flag", invoice).status == "executed", invoice
    assert _outcome(report, "invoices.match", "INV-9011").status == "failed"  # the service refused it
    # The auditor reads but may not write.
    assert _outcome(report, "invoices.get", "INV-9001", "ap-auditor").status == "executed"
    denied = _outcome(report, "invoices.flag", "INV-9001", "ap-auditor")
    assert (denied.decision, denied.reasons) == ("deny", ["not_granted"])
    assert report.audit_ok
    # Every decision was printed.
    assert sum(1 for line in lines if line.startswith("  ")) == len(report.outcomes)

    # The service's state is what those decisions allow, and nothing more.
    state = ap.snapshot(report.service_db)
    assert sorted((p["invoice_id"], p["amount"]) for p in state["payments"]) == [
        ("INV-9001", 500),
        ("INV-9009", 1000),
    ]
    assert state["bank_changes"] == []
    assert state["vendors"]["V-1006"]["bank_account_last4"] == "6819"
    assert state["invoices"]["INV-9004"]["status"] == "open"
    assert state["invoices"]["INV-9002"]["status"] == "matched"
    assert {f["invoice_id"]: f["reason_code"] for f in state["flags"]} == {
        "INV-9003": "over_limit",
        "INV-9005": "price_variance",
        "INV-9006": "quantity_variance",
        "INV-9007": "missing_receipt",
        "INV-9010": "bank_change_request",
        "INV-9011": "duplicate",
    }

    # Approvals carry the rule-level quorum; the escalated run waits with an open handoff.
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(engine, only=["approvals", "runs", "handoffs"])
            approvals, runs, handoffs = meta.tables["approvals"], meta.tables["runs"], meta.tables["handoffs"]
            quorum = {
                row.step_id: row.quorum
                for row in conn.execute(select(approvals.c.step_id, approvals.c.quorum, approvals.c.state))
            }
            assert sorted(quorum.values()) == [1, 2, 2]
            assert (
                conn.execute(select(runs.c.state).where(runs.c.id == conflict.run_id)).scalar_one()
                == "escalated"
            )
            open_handoffs = conn.execute(
                select(handoffs.c.reason_code).where(handoffs.c.run_id == conflict.run_id)
            )
            assert [row[0] for row in open_handoffs] == ["conflicting_records"]
    finally:
        engine.dispose()

    # The service received the injected key on every call; nothing stored anywhere holds it.
    http_calls = [o for o in report.outcomes if o.status in ("executed", "failed")]
    logged = ap.request_log(report.service_db)
    assert len(logged) == len(http_calls)
    assert {row["caller"] for row in logged} == {ap.caller_fingerprint(api_key)}
    assert all(row["idempotency_key"] for row in logged)
    for url in (db_url, f"sqlite:///{report.service_db}"):
        for table, row in _stored_text(url):
            assert api_key not in row, table
    for path in (tmp_path / "demo").iterdir():
        assert api_key.encode() not in path.read_bytes(), path.name


def test_egress_allowlist_is_what_lets_interlock_reach_the_service(service: Any, tmp_path: Path) -> None:
    loaded = agent.manifest_for(service.url, tmp_path)
    settings = Settings(database={"url": f"sqlite:///{tmp_path / 'il.db'}"})  # nothing allowed
    with Interlock(settings) as il:
        il.migrate()
        il.load_workflow(loaded)
        creds = il.agents.create(
            "ap-matcher", workflow="invoice-matching", environment="production", actor="t"
        )
        token = il.issue_token(creds.client_id, creds.client_secret).token
        run = il.start_run(token)
        result = il.act(token, run.id, "invoices.get", {"invoice_id": "INV-9001"})
    assert (result.decision.decision, result.status) == ("allow", "failed")
    assert "egress denied" in (result.error or "")
    assert ap.request_log(service.db) == []


# ---- the golden set ---------------------------------------------------------------------------------


def test_golden_set_is_well_formed() -> None:
    golden = load_golden(EXAMPLE_DIR / "golden.yaml")
    manifest = load_manifest(MANIFEST).manifest
    assert len(golden.scenarios) >= 20
    assert golden.setup.reset == "ap_service:reset"
    tools = {t.name for t in manifest.tools}
    agents = {a.id for a in manifest.agents}
    for scenario in golden.scenarios:
        assert (scenario.agent or golden.agent) in agents, scenario.id
        for step in scenario.steps:
            assert step.tool in tools or step.expect.reason == "unknown_tool", (scenario.id, step.tool)


def test_golden_set_passes_against_the_real_service(
    api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("AP_SERVICE_PORT", str(port))
    monkeypatch.setenv("AP_SERVICE_DB", str(tmp_path / "ap-eval.db"))
    # The hook adds the service to these; set here so the test's environment is restored afterwards.
    monkeypatch.setenv("INTERLOCK_EGRESS__ALLOW_HOSTS", "[]")
    monkeypatch.setenv("INTERLOCK_EGRESS__ALLOW_CIDRS", "[]")
    text = MANIFEST.read_text().replace(agent.MANIFEST_BASE_URL, f"http://127.0.0.1:{port}")
    loaded = load_manifest_text(text, file=str(MANIFEST), base_dir=EXAMPLE_DIR)
    golden = load_golden(EXAMPLE_DIR / "golden.yaml")
    # The runner imports ap_service under its own name; reach that copy to stop its service.
    stop = PythonTransport(base_dir=EXAMPLE_DIR).resolve("ap_service:stop_service")[0]
    try:
        report = run_golden(loaded, golden, golden_name="golden.yaml")
    finally:
        stop()
    failures = [r.as_dict() for r in report.results if not r.passed]
    assert failures == []
    assert report.total >= 20
    assert json.loads(os.environ["INTERLOCK_EGRESS__ALLOW_HOSTS"]) == [f"127.0.0.1:{port}"]
    categories = report.by_category()
    assert {"payments", "stop-rules", "fraud", "access"} <= set(categories)
