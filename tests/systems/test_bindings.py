"""Per-environment bindings against two real HTTP servers on 127.0.0.1: a staging agent reaches the
staging endpoint with the staging credential and never production, with no fallback; each decision
records the binding it used. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from systems_fixtures import bound_manifest

from interlock import Interlock, Settings
from interlock._internal.store import tables as t


class Recorder:
    """One upstream: answers every GET with the ticket and records who asked, with what credential."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                recorder.seen.append((self.path, self.headers.get("Authorization", "")))
                body = json.dumps({"ticket": self.path.rsplit("/", 1)[-1], "from": recorder.name}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstreams() -> Iterator[tuple[Recorder, Recorder]]:
    prod, stage = Recorder("production"), Recorder("staging")
    yield prod, stage
    prod.close()
    stage.close()


@pytest.fixture
def ledger(
    db_url: str, tmp_path: Path, upstreams: tuple[Recorder, Recorder], monkeypatch: pytest.MonkeyPatch
):  # type: ignore[no-untyped-def]
    prod, stage = upstreams
    monkeypatch.setenv("DESK_PROD_TOKEN", "prod-secret-0001")
    monkeypatch.setenv("DESK_STAGING_TOKEN", "stage-secret-0002")
    monkeypatch.setenv("ARCHIVE_PROD_TOKEN", "archive-secret-0003")
    il = Interlock(
        Settings(
            database={"url": db_url}, egress={"allow_hosts": ["127.0.0.1:*"], "allow_cidrs": ["127.0.0.1/32"]}
        )
    )  # type: ignore[arg-type]
    il.migrate()
    runtime = il.load_workflow(bound_manifest(tmp_path, prod=prod.port, stage=stage.port))
    tokens = {}
    for agent in runtime.manifest.agents:
        creds = il.agents.create(agent.id, workflow="ledger", environment=agent.environment, actor="test")
        tokens[agent.id] = il.issue_token(creds.client_id, creds.client_secret).token
    yield il, tokens
    il.close()


def test_staging_reaches_staging_only_and_records_the_binding(ledger, upstreams) -> None:  # type: ignore[no-untyped-def]
    il, tokens = ledger
    prod, stage = upstreams
    run = il.start_run(tokens["stage-bot"]).id
    res = il.act(tokens["stage-bot"], run, "tickets.get", {"ticket_id": "T-7"})
    assert res.status == "executed", res
    assert res.result == {"ticket": "T-7", "from": "staging"}
    assert stage.seen == [("/tickets/T-7", "Bearer stage-secret-0002")]
    assert prod.seen == []
    binding = {
        "system": "helpdesk",
        "environment": "staging",
        "endpoint": f"http://127.0.0.1:{stage.port}",
        "credential": "env:DESK_STAGING_TOKEN",
    }
    assert res.decision.binding == binding
    # The record says the same: the decision row, the timeline and the audit event.
    with il.engine.connect() as conn:
        stored = conn.execute(
            select(t.decisions.c.binding).where(t.decisions.c.id == res.step_id)
        ).scalar_one()
        events = [json.loads(b) for b in conn.execute(select(t.audit_events.c.body)).scalars()]
    assert stored == binding
    assert il.get_run(run).steps_detail[0].decision.binding == binding
    assert [e["data"]["binding"] for e in events if e["kind"] == "action.executed"] == [binding]


def test_no_binding_for_the_environment_means_no_call_and_no_fallback(ledger, upstreams) -> None:  # type: ignore[no-untyped-def]
    il, tokens = ledger
    prod, stage = upstreams
    run = il.start_run(tokens["stage-bot"]).id
    # archive binds production only: the staging agent is refused before anything is called.
    res = il.act(tokens["stage-bot"], run, "archive.get", {"ticket_id": "T-8"})
    assert res.status == "denied"
    assert res.decision.reason_codes == ["no_binding"]
    assert "archive has no binding for environment staging" in res.decision.reasons[0].message
    assert prod.seen == []
    assert stage.seen == []


def test_production_reaches_production_with_its_own_credential(ledger, upstreams) -> None:  # type: ignore[no-untyped-def]
    il, tokens = ledger
    prod, stage = upstreams
    run = il.start_run(tokens["prod-bot"]).id
    res = il.act(tokens["prod-bot"], run, "tickets.get", {"ticket_id": "T-9"})
    assert res.status == "executed", res
    archived = il.act(tokens["prod-bot"], run, "archive.get", {"ticket_id": "T-9"})
    assert archived.status == "executed", archived
    assert prod.seen == [
        ("/tickets/T-9", "Bearer prod-secret-0001"),
        ("/archive/tickets/T-9", "Bearer archive-secret-0003"),
    ]
    assert stage.seen == []
    assert res.decision.binding is not None
    assert res.decision.binding["environment"] == "production"


def test_a_staging_token_cannot_be_used_on_a_production_run(ledger, upstreams) -> None:  # type: ignore[no-untyped-def]
    from interlock import InterlockError

    il, tokens = ledger
    prod, stage = upstreams
    run = il.start_run(tokens["prod-bot"]).id
    with pytest.raises(InterlockError):
        il.act(tokens["stage-bot"], run, "tickets.get", {"ticket_id": "T-10"})
    assert prod.seen == []
    assert stage.seen == []
