"""The verifier's two faces over real HTTP on 127.0.0.1, on SQLite and PostgreSQL: the REST
routes under /v1/verifications and the MCP tools interlock.verifications.*, each settling a
request (the action runs once) and each refusing what the verifier may not do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from conftest import Harness
from interlock._internal.server import create_app
from servers import LiveServer
from verifier_manifest import verifier_manifest

REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
BIG_REFUND = {"ticket_id": "T-1004", "amount": 300, "currency": "EUR", "reason": "double charge"}


class Served:
    def __init__(self, h: Harness, url: str) -> None:
        self.h = h
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60)

    def auth(self, agent: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.h.tokens[agent]}"}

    def pending(self, arguments: dict[str, Any] = REFUND) -> tuple[str, str]:
        run = self.h.run()
        r = self.http.post(
            f"/v1/runs/{run}/actions",
            headers=self.auth("triage-bot"),
            json={
                "tool": "payments.refund",
                "arguments": arguments,
                "idempotency_key": f"k-{arguments['amount']}",
            },
        )
        assert r.status_code == 202, r.text
        return run, str(r.json()["approval_id"])

    def mcp(self, agent: str, fn: Any) -> Any:
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def main() -> Any:
            async with (
                httpx2.AsyncClient(headers=self.auth(agent), timeout=httpx2.Timeout(30.0, read=60.0)) as http,
                Client(streamable_http_client(f"{self.url}/mcp", http_client=http), cache=None) as client,
            ):
                return await fn(client)

        return anyio.run(main)


@pytest.fixture
def served(db_url: str) -> Iterator[Served]:
    h = Harness(db_url, manifest=verifier_manifest())
    try:
        with LiveServer(create_app(interlock=h.il)) as url:
            s = Served(h, url)
            try:
                yield s
            finally:
                s.http.close()
    finally:
        h.close()


def test_rest_verifier_lists_reads_and_settles(served: Served, desk: Any) -> None:
    checker = served.auth("refund-checker")
    _, approval_id = served.pending()

    listed = served.http.get("/v1/verifications", headers=checker)
    assert listed.status_code == 200, listed.text
    [item] = listed.json()
    assert item["id"] == approval_id
    assert item["verification"] == "awaiting"
    assert item["package"]["impact_if_accepted"]

    one = served.http.get(f"/v1/verifications/{approval_id}", headers=checker).json()
    wrong = served.http.post(
        f"/v1/verifications/{approval_id}/verdict",
        headers=checker,
        json={"verdict": "approve", "args_hash": "0" * 64},
    )
    assert wrong.status_code == 409, wrong.text
    assert wrong.json()["error"]["code"] == "args_mismatch"

    settled = served.http.post(
        f"/v1/verifications/{approval_id}/verdict",
        headers=checker,
        json={
            "verdict": "approve",
            "args_hash": one["args_hash"],
            "reasoning": "matches the order",
            "model": "mid-2",
            "input_tokens": 2000,
            "output_tokens": 100,
            "task": "verification",
        },
    )
    assert settled.status_code == 200, settled.text
    body = settled.json()
    assert body["state"] == "approved"
    assert body["execution"] == "done"
    assert body["verdict"]["settles"] is True
    assert body["verdict"]["cost_usd"] == pytest.approx(0.0035)  # 2000 x 1.5/M + 100 x 5/M
    assert desk.refunds_total() == 120

    again = served.http.post(
        f"/v1/verifications/{approval_id}/verdict",
        headers=checker,
        json={"verdict": "approve", "args_hash": one["args_hash"]},
    )
    assert again.status_code == 409
    assert desk.refunds_total() == 120


def test_rest_refuses_other_agents_and_operators(served: Served) -> None:
    _, approval_id = served.pending()
    bot = served.http.get("/v1/verifications", headers=served.auth("triage-bot"))
    assert bot.status_code == 403
    assert bot.json()["error"]["code"] == "not_a_verifier"
    _, token = served.h.il.operators.create("alice", roles=["approver"], workflows=None, actor="test")
    person = served.http.get("/v1/verifications", headers={"Authorization": f"Bearer {token}"})
    assert person.status_code == 401
    assert person.json()["error"]["code"] == "wrong_token_type"
    missing = served.http.get("/v1/verifications/apr_nope", headers=served.auth("refund-checker"))
    assert missing.status_code == 404


def test_mcp_verifier_tools_settle_and_refer(served: Served, desk: Any) -> None:
    _, small = served.pending()
    _, big = served.pending(BIG_REFUND)

    async def verify(client: Any) -> dict[str, Any]:
        names = {tool.name for tool in (await client.list_tools()).tools}
        listed = await client.call_tool("interlock.verifications.list", {})
        waiting = json.loads(listed.content[0].text)["verifications"]
        out: dict[str, Any] = {"names": names, "waiting": sorted(v["id"] for v in waiting)}
        for approval_id in (small, big):
            got = await client.call_tool("interlock.verifications.get", {"approval_id": approval_id})
            args_hash = got.structured_content["args_hash"]
            done = await client.call_tool(
                "interlock.verifications.verdict",
                {"approval_id": approval_id, "verdict": "approve", "args_hash": args_hash, "reasoning": "ok"},
            )
            assert not done.is_error, done.content
            out[approval_id] = done.structured_content
        return out

    out = served.mcp("refund-checker", verify)
    assert {
        "interlock.verifications.list",
        "interlock.verifications.get",
        "interlock.verifications.verdict",
    } <= out["names"]
    assert out["waiting"] == sorted([small, big])
    assert out[small]["state"] == "approved"
    assert out[small]["execution"] == "done"
    assert out[big]["state"] == "pending"  # more than a verifier may settle: a person decides
    assert out[big]["verdict"]["code"] == "settle_forbidden"
    assert desk.refunds_total() == 120

    async def as_bot(client: Any) -> tuple[set[str], Any]:
        names = {tool.name for tool in (await client.list_tools()).tools}
        try:
            await client.call_tool("interlock.verifications.list", {})
        except Exception as exc:  # the same "Unknown tool" as a tool policy hides
            return names, exc
        return names, None

    names, refused = served.mcp("triage-bot", as_bot)
    assert not any(name.startswith("interlock.verifications") for name in names)
    assert refused is not None
    assert "Unknown tool" in str(refused)
