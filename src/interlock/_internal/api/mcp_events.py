"""Resumable MCP streams: what the gateway keeps so that a client whose SSE stream dropped can
reconnect with ``Last-Event-ID`` and receive what it missed.

Each handshake-era MCP session gets its own :class:`SessionEventStore`, in the memory of the
replica that holds the session. Why not the database: the session itself (its server task, its
in-flight calls) lives in one replica's memory, and a reconnect that reaches another replica is
answered 404 ("session not found") before any event store is asked, so a shared store would buy
nothing. Deployments with several replicas route each ``Mcp-Session-Id`` to one replica (sticky
sessions), as they must for MCP sessions anyway. Sessionless 2026-07-28 requests have no
resumption to offer: one request, one response, and closing the stream cancels it.

Why one store per session rather than one per gateway: the SDK's transport names a POST's stream
after the JSON-RPC request id, which every session starts counting from the same numbers, so
one shared store would mix two sessions' streams.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict
from typing import Any

from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types import JSONRPCMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import Receive, Scope, Send

_VERSION_HEADER = b"mcp-protocol-version"
_HANDSHAKE_VERSIONS = frozenset(v.encode("latin-1") for v in HANDSHAKE_PROTOCOL_VERSIONS)


class SessionEventStore(EventStore):
    """One session's events, the newest ``capacity`` of them, in memory.

    Event ids are ``<random>.<counter>``: unguessable across sessions, ordered within one. A
    client asking to resume after an event that has been evicted (or never existed here) gets
    an empty stream, and must retry its request.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._prefix = secrets.token_urlsafe(9)
        self._counter = itertools.count(1)
        self._events: OrderedDict[EventId, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()

    # No __len__: the SDK tests a store for truth ("if not event_store"), and an empty one must pass.
    @property
    def size(self) -> int:
        return len(self._events)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = f"{self._prefix}.{next(self._counter)}"
        self._events[event_id] = (stream_id, message)
        while len(self._events) > self._capacity:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        found = self._events.get(last_event_id)
        if found is None:
            return None
        stream_id = found[0]
        # A snapshot: sending awaits, and the session may store more events meanwhile (those go
        # to the resumed stream live).
        later = list(self._events.items())
        start = next(i for i, (event_id, _) in enumerate(later) if event_id == last_event_id) + 1
        for event_id, (stream, message) in later[start:]:
            if stream == stream_id and message is not None:  # None: a priming event, no content
                await send_callback(EventMessage(message, event_id))
        return stream_id


class ResumableSessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, with a fresh :class:`SessionEventStore` for every session.

    The manager reads ``event_store`` once for each session it admits (and never for stateless
    or 2026-07-28 requests); answering that read with a new store is what scopes events to one
    session. ``resume_events=0`` turns resumption off.
    """

    def __init__(self, *args: Any, resume_events: int, **kwargs: Any) -> None:
        self._resume_events = resume_events
        super().__init__(*args, **kwargs)

    @property
    def event_store(self) -> EventStore | None:
        return SessionEventStore(self._resume_events) if self._resume_events > 0 else None

    @event_store.setter
    def event_store(self, value: EventStore | None) -> None:
        # The base class stores the store it was given (none): every session gets its own instead.
        del value

    async def _handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A sessionless 2026-07-28 request is answered as JSON, handled in the request's own task.

        In SSE mode the SDK runs every such request as a task group of two (the handler, and a
        watcher that cancels it when the client hangs up) behind a memory stream and a timer,
        and still answers JSON unless the handler sends a notification or outlasts the keepalive
        interval. The gateway's handlers send no notifications, and a governed call must not be
        cancelled by a hang-up anyway (the pipeline finishes and records it), so that machinery
        buys nothing here but its cost on every call. What is given up: a call that outlasts the
        interval (15 s) is not switched to a stream of keepalive comments; its client waits on
        the open response. Handshake-era sessions keep their SSE streams, with priming events
        and resumption.
        """
        version = next((v for k, v in scope["headers"] if k == _VERSION_HEADER), None)
        if version is None or version in _HANDSHAKE_VERSIONS or self._task_group is None:
            await super()._handle_request(scope, receive, send)
            return
        await handle_modern_request(
            self.app, self.security_settings, True, self._lifespan_state, scope, receive, send
        )


__all__ = ["ResumableSessionManager", "SessionEventStore"]
