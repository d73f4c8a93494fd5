"""``interlock init [DIR]``: a new workflow that validates, evaluates and serves at once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from servers import ServeProcess, interlock_command


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*interlock_command(), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_init_then_validate_and_eval(tmp_path: Path) -> None:
    proc = _cli("init", "refund-desk", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["workflow"] == "refund-desk"
    folder = tmp_path / "refund-desk"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "golden.yaml",
        "tools.py",
        "workflow.yaml",
    ]
    assert "#" in (folder / "workflow.yaml").read_text()  # commented for the reader

    proc = _cli("workflow", "validate", "refund-desk/workflow.yaml", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["name"] == "refund-desk"

    proc = _cli("eval", "refund-desk", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _cli("init", cwd=tmp_path).returncode == 0
    (tmp_path / "workflow.yaml").write_text("mine\n")
    proc = _cli("init", cwd=tmp_path)
    assert proc.returncode == 1
    assert "already exist" in proc.stderr
    assert (tmp_path / "workflow.yaml").read_text() == "mine\n"
    assert _cli("init", "--force", cwd=tmp_path).returncode == 0
    assert (tmp_path / "workflow.yaml").read_text() != "mine\n"


def test_init_refuses_a_bad_name(tmp_path: Path) -> None:
    proc = _cli("init", "x", "--name", "9 lives", cwd=tmp_path)
    assert proc.returncode == 1
    assert "not a workflow name" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_init_serves_an_agent_read_approval_and_forbidden_action(tmp_path: Path) -> None:
    assert _cli("init", "shop", cwd=tmp_path).returncode == 0
    db_url = f"sqlite:///{tmp_path / 'interlock.db'}"
    proc = _cli(
        "agents",
        "create",
        "order-bot",
        "--workflow",
        "shop",
        "--env",
        "production",
        "--manifest",
        str(tmp_path / "shop" / "workflow.yaml"),
        "--db",
        db_url,
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    creds = json.loads(proc.stdout)
    server = ServeProcess(
        "shop", manifest=tmp_path / "shop" / "workflow.yaml", db_url=db_url, workdir=tmp_path
    )
    try:
        server.wait_ready(timeout=120)
        http = server.http
        token = http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": creds["client_id"],
                "client_secret": creds["client_secret"],
            },
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        run = http.post("/v1/runs", json={"trigger": {"source": "test"}}, headers=auth).json()["id"]

        def act(tool: str, arguments: dict) -> httpx.Response:
            return http.post(
                f"/v1/runs/{run}/actions", json={"tool": tool, "arguments": arguments}, headers=auth
            )

        read = act("orders.get", {"order_id": "O-1001"})
        assert read.status_code == 200, read.text
        assert read.json()["result"]["customer"] == "Ada"
        cancel = act("orders.cancel", {"order_id": "O-1001", "reason": "asked"})
        assert cancel.status_code == 202, cancel.text
        delete = act("orders.delete", {"order_id": "O-1002"})
        assert delete.status_code == 403, delete.text
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "interlock.db")
