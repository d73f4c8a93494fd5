"""Bindings for MCP and Python tools: the MCP server and the credential come from the run's
environment; validate refuses what would let an environment fall back to another's."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock import ManifestError
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import load_manifest_text

MANIFEST = """\
name: repo-ops
version: "1"
owner: ops@example.com
objective: bindings for MCP and Python tools
success_metric: {name: x}
environments: [production, staging]
agents:
  - {id: stage-bot, environment: staging, roles: [dev]}
  - {id: prod-bot, environment: production, roles: [dev]}
roles:
  dev: {verbs: [read]}
mcp_servers:
  - {name: git-prod, command: [mcp-server-git, --repository, /srv/prod]}
  - {name: git-staging, command: [mcp-server-git, --repository, /srv/staging]}
systems:
  - name: repo
    owner: platform@example.com
    bindings:
      production: {mcp_server: git-prod, credential: {env: REPO_PROD}}
      staging: {mcp_server: git-staging, credential: {env: REPO_STAGING}}
tools:
  - name: git.status
    verb: read
    system: repo
    input_schema: {type: object, properties: {repo_path: {type: string}}, required: [repo_path]}
    upstream: {kind: mcp, tool: git_status}
  - name: local.count
    verb: read
    system: repo
    input_schema: {type: object, properties: {}}
    upstream: {kind: python, callable: "somewhere:count"}
rules:
  allow: [{id: reads, verb: read}]
"""


def test_mcp_server_and_credential_follow_the_environment(tmp_path: Path) -> None:
    runtime = build_runtime(load_manifest_text(MANIFEST, base_dir=tmp_path))
    try:
        for agent, env, server, cred in (
            ("stage-bot", "staging", "git-staging", "REPO_STAGING"),
            ("prod-bot", "production", "git-prod", "REPO_PROD"),
        ):
            verdict = evaluate(
                runtime, agent_id=agent, environment=env, intent=Intent("git.status", {"repo_path": "."})
            )
            assert verdict.decision.decision == "allow"
            assert verdict.tool is not None
            assert verdict.tool.spec.upstream.server == server  # type: ignore[union-attr]
            assert verdict.tool.spec.credential is not None
            assert verdict.tool.spec.credential.env == cred
            assert verdict.decision.binding == {
                "system": "repo",
                "environment": env,
                "endpoint": f"mcp:{server}",
                "credential": f"env:{cred}",
            }
            python = evaluate(runtime, agent_id=agent, environment=env, intent=Intent("local.count", {}))
            assert python.tool is not None
            assert python.tool.spec.credential is not None
            assert python.tool.spec.credential.env == cred
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "upstream: {kind: mcp, tool: git_status}",
            "upstream: {kind: mcp, server: git-prod, tool: git_status}",
            "names the MCP server per environment; remove 'server'",
        ),
        ("mcp_server: git-staging, ", "", "has no mcp_server for environment 'staging'"),
        ("mcp_server: git-staging", "mcp_server: git-stage", "binds unknown MCP server 'git-stage'"),
    ],
)
def test_mcp_binding_mistakes(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in MANIFEST
    with pytest.raises(ManifestError) as info:
        load_manifest_text(MANIFEST.replace(old, new), base_dir=tmp_path)
    assert message in info.value.message
    assert info.value.line is not None
