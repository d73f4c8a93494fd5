"""The transport seam: how an allowed action reaches its upstream (Python, HTTP, MCP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from interlock._internal.manifest.models import ToolSpec


@dataclass(frozen=True)
class CallContext:
    run_id: str
    step_id: str
    agent_id: str
    workflow: str
    idempotency_key: str | None
    # The upstream credential, resolved from its reference just before the call. Never stored.
    credential: str | None
    timeout_s: float


class Transport(Protocol):
    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """Execute the tool; raise ``UpstreamError`` on failure."""
        ...

    def close(self) -> None: ...
