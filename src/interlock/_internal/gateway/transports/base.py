"""The transport seam: how an allowed action reaches its upstream (Python, HTTP, MCP)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class AsyncTransport(Transport, Protocol):
    """A transport whose upstream is asynchronous (MCP sessions): a coroutine awaits the call on
    the event loop it runs on, with no worker thread in between."""

    async def call_async(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """The same call as :meth:`call`; raise ``UpstreamError`` on failure."""
        ...
