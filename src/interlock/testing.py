"""Helpers for testing your own workflows and agents against Interlock.

>>> from interlock.testing import embedded
>>> with embedded("workflow.yaml") as kit:                  # a throwaway SQLite database
...     kit.stub("payments.refund", lambda **args: {"refund_id": "R-1", "status": "succeeded"})
...     run = kit.run("triage-bot")
...     result = kit.act(run, "payments.refund", {"ticket_id": "T-1", "amount": 30, ...})
...     assert result.status == "executed"
...     assert kit.upstream.calls[-1].tool == "payments.refund"
...     assert [e.kind for e in kit.audit()][-1] == "action.executed"

Everything goes through the real pipeline (schema, Cedar policy, limits, approvals, audit); only the
upstreams are replaced, by :class:`InMemoryUpstream`, unless ``real_upstreams=True``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlock._internal.audit.chain import AuditEvent, iter_events
from interlock._internal.gateway.models import ActionResult
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.service import Interlock
from interlock._internal.settings import DatabaseSettings, Settings
from interlock.exceptions import UpstreamError


@dataclass(frozen=True)
class Call:
    tool: str
    arguments: dict[str, Any]
    idempotency_key: str | None


@dataclass
class InMemoryUpstream:
    """Answers every tool from Python functions registered per tool, and records each call."""

    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def stub(self, tool: str, handler: Callable[..., Any]) -> None:
        self.handlers[tool] = handler

    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        self.calls.append(Call(tool.name, dict(arguments), ctx.idempotency_key))
        handler = self.handlers.get(tool.name)
        if handler is None:
            raise UpstreamError(f"no in-memory stub for {tool.name}; call kit.stub({tool.name!r}, …)")
        try:
            return handler(**arguments)
        except UpstreamError:
            raise
        except Exception as exc:
            raise UpstreamError(f"{tool.name} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        return None


@dataclass
class TestKit:
    """An embedded Interlock with one workflow loaded and every declared agent ready to act."""

    __test__ = False  # not a pytest test class

    interlock: Interlock
    workflow: str
    upstream: InMemoryUpstream
    tokens: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)

    def stub(self, tool: str, handler: Callable[..., Any]) -> None:
        self.upstream.stub(tool, handler)

    def run(self, agent: str, *, trigger: Any = None, started_by: str | None = None) -> str:
        return self.interlock.start_run(self.tokens[agent], trigger=trigger, started_by=started_by).id

    def act(
        self, run_id: str, tool: str, arguments: Any, *, agent: str | None = None, **kw: Any
    ) -> ActionResult:
        owner = agent or self.interlock.get_run(run_id).agent_id
        return self.interlock.act(self.tokens[owner], run_id, tool, arguments, **kw)

    def audit(self, *, run_id: str | None = None, since_seq: int | None = None) -> list[AuditEvent]:
        """The audit events recorded so far (optionally of one run, or after a sequence number)."""
        return list(iter_events(self.interlock.engine, run_id=run_id, since_seq=since_seq))


@contextmanager
def embedded(
    manifest: str | Path,
    *,
    database_url: str | None = None,
    settings: Settings | None = None,
    real_upstreams: bool = False,
) -> Iterator[TestKit]:
    """Interlock on a temporary SQLite database (or ``database_url``) with ``manifest`` loaded and
    an agent created for every agent the manifest declares."""
    with tempfile.TemporaryDirectory(prefix="interlock-test-") as tmp:
        url = database_url or f"sqlite:///{Path(tmp) / 'interlock.db'}"
        base = settings or Settings()
        il = Interlock(base.model_copy(update={"database": DatabaseSettings(url=url)}))
        upstream = InMemoryUpstream()
        try:
            il.migrate()
            runtime = il.load_workflow(manifest, transports=None if real_upstreams else {"*": upstream})
            kit = TestKit(interlock=il, workflow=runtime.name, upstream=upstream)
            for agent in runtime.manifest.agents:
                creds = il.agents.create(
                    agent.id, workflow=runtime.name, environment=agent.environment, actor="test"
                )
                kit.secrets[agent.id] = creds.client_secret
                kit.tokens[agent.id] = il.issue_token(creds.client_id, creds.client_secret).token
            yield kit
        finally:
            il.close()


__all__ = ["Call", "InMemoryUpstream", "TestKit", "embedded"]
