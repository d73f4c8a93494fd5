"""``interlock demo``: the reference workflow end to end, over real HTTP, in under 30 seconds.

Starts the server on a temporary SQLite database with the support-triage workflow, drives a
scripted agent through a triage scenario, prints every decision, and says where to look next.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from interlock._internal.cli.common import console, fail, print_json
from interlock._internal.examples import reference_manifest


@dataclass(frozen=True)
class Step:
    what: str
    tool: str
    arguments: dict[str, Any]
    reasoning: str | None = None


SCENARIO = [
    Step("search open refund tickets", "tickets.search", {"query": "refund", "limit": 5}),
    Step("read the ticket", "tickets.get", {"ticket_id": "T-1002"}),
    Step("read the customer", "customers.get", {"customer_id": "C-1002"}),
    Step(
        "draft a reply",
        "replies.draft",
        {"ticket_id": "T-1002", "body": "Sorry for the delay; a refund is on its way."},
    ),
    Step(
        "set priority and group",
        "tickets.update",
        {"ticket_id": "T-1002", "fields": {"priority": "high", "group": "billing"}},
    ),
    Step(
        "refund 30 USD",
        "payments.refund",
        {"ticket_id": "T-1002", "amount": 30, "currency": "USD", "reason": "late delivery"},
        "Order arrived 9 days late; policy allows a goodwill refund.",
    ),
    Step(
        "refund 120 USD",
        "payments.refund",
        {"ticket_id": "T-1003", "amount": 120, "currency": "USD", "reason": "damaged item"},
        "Customer sent photos of the broken item.",
    ),
    Step("delete the customer", "customers.delete", {"customer_id": "C-1003"}),
    Step(
        "update with an unknown field",
        "tickets.update",
        {"ticket_id": "T-1002", "fields": {"priority": "low"}, "assignee": "bob"},
    ),
]

_STATUS_STYLE = {
    "executed": "green",
    "pending_approval": "yellow",
    "denied": "red",
    "invalid": "red",
    "limited": "magenta",
    "escalated": "magenta",
    "failed": "red",
}


def _reason_text(reason: dict[str, Any]) -> str:
    text = str(reason.get("code"))
    if reason.get("policy_id"):
        text += f" [{reason['policy_id']}]"
    if reason.get("field"):
        text += f" (field {reason['field']})"
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo(
    keep: Annotated[
        Path | None,
        typer.Option("--keep", help="Keep the database in this directory instead of a temporary one."),
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decisions as JSON.")] = False,
) -> None:
    """Run the support-triage workflow end to end: server, scripted agent, decisions."""
    import os

    import httpx
    import uvicorn

    from interlock._internal.server import create_app
    from interlock._internal.service import Interlock
    from interlock._internal.settings import DatabaseSettings, Settings

    started = time.monotonic()
    example = reference_manifest()
    if not example.is_file():
        fail(f"the reference workflow is missing: {example}")
    workdir = Path(tempfile.mkdtemp(prefix="interlock-demo-")) if keep is None else keep
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["SUPPORT_DESK_DB"] = str(workdir / "support-desk.db")
    db_url = f"sqlite:///{workdir / 'interlock.db'}"
    il = Interlock(Settings(database=DatabaseSettings(url=db_url), manifests=[example]))
    server: uvicorn.Server | None = None
    try:
        il.start()
        creds = il.agents.create(
            "triage-bot", workflow="support-triage", environment="production", actor="demo"
        )
        port = port or _free_port()
        config = uvicorn.Config(create_app(interlock=il), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(200):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            token = http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": creds.client_id,
                    "client_secret": creds.client_secret,
                },
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            run = http.post(
                "/v1/runs", json={"trigger": {"source": "demo", "ticket": "T-1002"}}, headers=auth
            ).json()
            rows = []
            for step in SCENARIO:
                body: dict[str, Any] = {"tool": step.tool, "arguments": step.arguments}
                if step.reasoning:
                    body["reasoning"] = step.reasoning
                resp = http.post(f"/v1/runs/{run['id']}/actions", json=body, headers=auth)
                data = resp.json()
                action = data.get("action", data)
                decision = action.get("decision") or {}
                reasons = decision.get("reasons") or []
                why = "; ".join(_reason_text(r) for r in reasons)
                if action.get("approval_id"):
                    why += f"; approval {action['approval_id']}"
                rows.append(
                    {
                        "step": step.what,
                        "tool": step.tool,
                        "http": resp.status_code,
                        "status": action.get("status"),
                        "decision": decision.get("decision"),
                        "why": why,
                    }
                )
        elapsed = time.monotonic() - started
        verified = il.verify_audit()
        if as_json:
            print_json(
                {
                    "run_id": run["id"],
                    "steps": rows,
                    "audit_ok": verified.ok,
                    "seconds": round(elapsed, 2),
                    "database": db_url,
                }
            )
        else:
            _print(
                rows,
                run_id=run["id"],
                db_url=db_url,
                base=base,
                audit_ok=verified.ok,
                events=verified.events,
                elapsed=elapsed,
                kept=keep is not None,
                example=example,
            )
        if not verified.ok:
            raise SystemExit(1)
    finally:
        if server is not None:
            server.should_exit = True
            time.sleep(0.2)
        il.close()
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _print(
    rows: list[dict[str, Any]],
    *,
    run_id: str,
    db_url: str,
    base: str,
    audit_ok: bool,
    events: int,
    elapsed: float,
    kept: bool,
    example: Path,
) -> None:
    table = Table(title=f"support-triage: run {run_id}", show_lines=False)
    for col in ("#", "agent's action", "HTTP", "outcome", "why"):
        table.add_column(col, overflow="fold")
    for i, row in enumerate(rows, 1):
        style = _STATUS_STYLE.get(str(row["status"]), "")
        table.add_row(
            str(i),
            escape(f"{row['step']} ({row['tool']})"),
            str(row["http"]),
            f"[{style}]{escape(str(row['status']))}[/]",
            escape(row["why"]),
        )
    console.print(table)
    console.print(
        f"audit chain: {'[green]verified[/]' if audit_ok else '[red]BROKEN[/]'} ({events} events)"
        f" — done in {elapsed:.1f}s"
    )
    console.print("\n[bold]Where to look next[/]")
    if kept:
        console.print(
            f"  • export the run:       interlock runs export {run_id} --out run.json --db {escape(db_url)}"
        )
        console.print(f"  • replay its decisions: interlock runs replay {run_id} --db {escape(db_url)}")
        console.print(f"  • verify the audit log: interlock audit verify --db {escape(db_url)}")
        console.print(f"  • decide the refund:    interlock approvals list --db {escape(db_url)}")
        console.print(
            f"  • serve it with the console: interlock serve --db {escape(db_url)}"
            f" --manifest {escape(str(example))}"
        )
        console.print(f"    (the run's timeline is at /ui/runs/{run_id})")
    else:
        console.print("  • keep the database to explore it: interlock demo --keep ./demo-data")
    console.print(
        f"  • the workflow's operating model: interlock workflow show {escape(str(example))}", soft_wrap=True
    )
    console.print("  • start a workflow of your own: interlock init my-workflow")
    console.print(f"  • API while it ran: {base}/v1 (OpenAPI at /openapi.json), MCP at {base}/mcp")
