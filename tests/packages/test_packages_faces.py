"""Work packages through the faces: the REST API over HTTP and ``interlock packages``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.cli import packages as packages_cli
from interlock._internal.server import create_app
from servers import LiveServer

runner = CliRunner()


SPEC = {
    "workflow": "support-triage",
    "agent": "triage-bot",
    "task": "refund T-1002",
    "tools": {"payments.refund": {"arguments": {"amount": {"max_total": 60}}}},
    "ttl_s": 600,
}
REFUND = {"ticket_id": "T-1002", "amount": 40, "currency": "EUR", "reason": "late"}


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("INTERLOCK_PACKAGES__SIGNING_SEED", "INTERLOCK_MANIFESTS"):
        monkeypatch.delenv(name, raising=False)


def test_rest_issue_run_show_revoke(harness: Harness, desk: Any) -> None:
    _, admin = harness.il.operators.create("ci", roles=["owner"], workflows=None, actor="test")
    _, auditor = harness.il.operators.create("audrey", roles=["auditor"], workflows=None, actor="test")
    ops = {"Authorization": f"Bearer {admin}"}
    with (
        LiveServer(create_app(interlock=harness.il)) as base,
        httpx.Client(base_url=base, timeout=60) as http,
    ):
        refused = http.post("/v1/packages", json=SPEC, headers={"Authorization": f"Bearer {auditor}"})
        assert refused.status_code == 403, refused.text
        issued = http.post("/v1/packages", json=SPEC, headers=ops)
        assert issued.status_code == 201, issued.text
        package = issued.json()
        pem = http.get("/v1/packages/public-key").text
        assert "BEGIN PUBLIC KEY" in pem
        agent = {"Authorization": f"Bearer {harness.tokens['triage-bot']}"}
        run = http.post("/v1/runs", json={"package": package["token"]}, headers=agent)
        assert run.status_code == 201, run.text
        assert run.json()["package_id"] == package["id"]
        again = http.post("/v1/runs", json={"package": package["token"]}, headers=agent)
        assert again.status_code == 401
        assert again.json()["error"]["code"] == "package_used"
        run_id = run.json()["id"]
        first = http.post(
            f"/v1/runs/{run_id}/actions", json={"tool": "payments.refund", "arguments": REFUND}, headers=agent
        )
        assert first.json()["status"] == "executed", first.text
        second = http.post(
            f"/v1/runs/{run_id}/actions",
            json={"tool": "payments.refund", "arguments": {**REFUND, "ticket_id": "T-1003"}},
            headers=agent,
        )
        assert second.json()["action"]["decision"]["reasons"][0]["code"] == "package_bound", second.text
        shown = http.get(f"/v1/packages/{package['id']}", headers=ops).json()
        assert shown["state"] == "used"
        assert shown["run_id"] == run_id
        assert shown["usage"]["payments.refund:amount"]["used"] == 40_000_000
        verified = http.post("/v1/packages/verify", json={"package": package["token"]}, headers=ops).json()
        assert verified["state"] == "used"
        revoked = http.post(f"/v1/packages/{package['id']}/revoke", json={"reason": "done"}, headers=ops)
        assert revoked.json()["state"] == "revoked"
        listed = http.get("/v1/packages", headers=ops).json()
        assert [p["id"] for p in listed] == [package["id"]]
    assert desk.refunds_total() == 40


def test_cli_issue_show_verify_offline_revoke(harness: Harness, db_url: str, tmp_path: Path) -> None:
    harness.il.operators.create("ci", roles=["owner"], workflows=None, actor="test")
    spec = tmp_path / "package.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "package.jws"
    issued = runner.invoke(
        packages_cli.app, ["issue", str(spec), "--as", "ci", "--db", db_url, "--out", str(out), "--json"]
    )
    assert issued.exit_code == 0, issued.stdout + issued.stderr
    package = json.loads(issued.stdout)
    assert out.read_text().strip() == package["token"]
    key = tmp_path / "packages.pem"
    pem = runner.invoke(packages_cli.app, ["public-key"])
    key.write_text(pem.stdout)
    offline = runner.invoke(packages_cli.app, ["verify", str(out), "--public-key", str(key), "--json"])
    assert offline.exit_code == 0, offline.stdout + offline.stderr
    assert json.loads(offline.stdout)["claims"]["jti"] == package["id"]
    forged = tmp_path / "forged.jws"
    head, body, sig = package["token"].split(".")
    forged.write_text(f"{head}.{body[:-4]}AAAA.{sig}")
    bad = runner.invoke(packages_cli.app, ["verify", str(forged), "--public-key", str(key), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["error"]["code"] == "package_invalid"
    shown = runner.invoke(packages_cli.app, ["show", package["id"], "--db", db_url])
    assert shown.exit_code == 0
    assert "issued" in shown.stdout
    revoked = runner.invoke(
        packages_cli.app, ["revoke", package["id"], "--as", "ci", "--db", db_url, "--json"]
    )
    assert json.loads(revoked.stdout)["state"] == "revoked"
    after = runner.invoke(packages_cli.app, ["verify", str(out), "--db", db_url, "--json"])
    assert after.exit_code == 1
    assert json.loads(after.stdout)["state"] == "revoked"
