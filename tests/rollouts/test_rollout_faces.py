"""``interlock rollout`` and ``/v1/workflows/{name}/rollout`` on SQLite and PostgreSQL: the same
service behind both, operator-permissioned, with the state in the database."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.cli import rollout
from interlock._internal.server import create_app

runner = CliRunner()
WF = "support-triage"
FORBID_UPDATES = (
    "    - {id: no-deletes,",
    "    - {id: no-updates, tool: tickets.update}\n    - {id: no-deletes,",
)
UPDATE = {"ticket_id": "T-1001", "fields": {"priority": "low"}}


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("INTERLOCK_IDENTITY__SIGNING_SEED", "INTERLOCK_AUDIT__SIGNING_SEED", "INTERLOCK_MANIFESTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Harness, str]]:
    h = Harness(db_url)
    for op_id, roles, workflows in (
        ("olga", ["owner"], [WF]),
        ("ana", ["approver"], [WF]),
        ("sam", ["owner"], ["other-flow"]),
    ):
        h.il.operators.create(op_id, roles=roles, workflows=workflows, actor="test")
    yield h, db_url
    h.close()


def candidate_text(path: Path) -> str:
    old, new = FORBID_UPDATES
    return path.read_text(encoding="utf-8").replace(old, new, 1)


def cli(*args: str) -> Any:
    return runner.invoke(rollout.app, list(args))


def test_the_cli_starts_shows_and_aborts_a_canary(
    setup: tuple[Harness, str], support_manifest_path: Path, tmp_path: Path
) -> None:
    h, db = setup
    folder = tmp_path / "candidate"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(candidate_text(support_manifest_path))
    (folder / "support_desk.py").symlink_to(support_manifest_path.parent / "support_desk.py")
    manifest = str(folder / "workflow.yaml")

    refused = cli("start", "--manifest", manifest, "--as", "ana", "--share", "1", "--db", db, "--json")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] == "forbidden"
    bad = cli("start", "--manifest", manifest, "--as", "olga", "--trigger", "channel", "--db", db, "--json")
    assert bad.exit_code == 1
    assert "FIELD=VALUE" in json.loads(bad.stdout)["error"]["message"]

    started = cli(
        "start", "--manifest", manifest, "--as", "olga", "--share", "1", "--trigger", "channel=email",
        "--max-denial-increase", "0.9", "--db", db, "--json",
    )  # fmt: skip
    assert started.exit_code == 0, started.stdout + started.stderr
    data = json.loads(started.stdout)
    assert (data["mode"], data["share"], data["triggers"], data["started_by"]) == (
        "canary",
        1.0,
        {"channel": ["email"]},
        "operator:olga",
    )
    # The embedded service never loaded the candidate: it serves it from the database.
    run = h.run()
    denied = h.act(run, "tickets.update", UPDATE)
    assert (denied.status, denied.decision.manifest_version) == ("denied", data["candidate_version"])

    shown = cli("status", WF, "--db", db, "--json")
    assert shown.exit_code == 0, shown.stdout
    report = json.loads(shown.stdout)
    assert report["transitions"] == {"allow->deny": 1}
    assert report["enforced"] == {"active": 0, "candidate": 1}
    text = cli("status", WF, "--db", db)
    assert text.exit_code == 0, text.stdout
    assert "allowed → denied: 1" in text.stdout
    assert "1 compared decisions: 0 unchanged, 1 changed (100.0%)" in text.stdout
    assert "runs: 1 on the candidate, 0 on the active version" in text.stdout

    aborted = cli("abort", WF, "--as", "olga", "-m", "wrong week", "--db", db)
    assert aborted.exit_code == 0, aborted.stdout
    assert "is back on" in aborted.stdout
    assert h.act(run, "tickets.update", UPDATE).status == "executed"
    again = cli("abort", WF, "--as", "olga", "--db", db, "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout)["error"]["code"] == "no_rollout"


class Api:
    def __init__(self, harness: Harness) -> None:
        self.http = TestClient(create_app(interlock=harness.il))
        self.headers = {}
        for name in ("olga", "ana", "sam"):
            _, token = harness.il.operators.create(
                f"{name}-api", roles=_ROLES[name][0], workflows=_ROLES[name][1], actor="t"
            )
            self.headers[name] = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, who: str, body: Any = None) -> Any:
        return self.http.post(path, headers=self.headers[who], json=body)

    def get(self, path: str, who: str) -> Any:
        return self.http.get(path, headers=self.headers[who])


_ROLES = {"olga": (["owner"], [WF]), "ana": (["approver"], [WF]), "sam": (["owner"], ["other-flow"])}


def test_the_rest_api_is_operator_permissioned(
    setup: tuple[Harness, str], support_manifest_path: Path
) -> None:
    h, _ = setup
    api = Api(h)
    path = f"/v1/workflows/{WF}/rollout"
    body = {
        "manifest": candidate_text(support_manifest_path),
        "agents": ["reporter"],
        "max_denial_increase": 0.2,
    }
    assert api.post(path, "ana", body).status_code == 403
    assert api.post(path, "sam", body).status_code == 404  # no role on it: like a typo
    assert api.get(path, "olga").status_code == 404  # no rollout yet
    wrong = api.post(path, "olga", {**body, "manifest": "name: other\n"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "manifest_invalid"
    other_name = candidate_text(support_manifest_path).replace(
        "name: support-triage", "name: support-other", 1
    )
    assert api.post(path, "olga", {**body, "manifest": other_name}).status_code == 422
    started = api.post(path, "olga", body)
    assert started.status_code == 201, started.text
    view = started.json()
    assert (view["mode"], view["agents"], view["thresholds"]["max_denial_increase"]) == (
        "canary",
        ["reporter"],
        0.2,
    )
    assert api.post(path, "olga", body).status_code == 409

    reporter = h.run("reporter")
    assert h.act(reporter, "tickets.get", {"ticket_id": "T-1001"}, agent="reporter").executed
    status = api.get(path, "ana")
    assert status.status_code == 200
    assert status.json()["enforced"] == {"active": 0, "candidate": 1}
    assert status.json()["runs_by_version"] == {view["candidate_version"]: 1}

    assert api.post(f"{path}/promote", "ana", {"reason": "x"}).status_code == 403
    promoted = api.post(f"{path}/promote", "olga", {"reason": "clean week"})
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["state"], promoted.json()["end_reason"]) == ("promoted", "clean week")
    assert h.il.runtime(WF).version_id == view["candidate_version"]
    assert api.post(f"{path}/abort", "olga").status_code == 404
