"""uvicorn's httptools protocol, sending each response's head and body in one write.

uvicorn writes the status line and headers to the socket when the app sends
``http.response.start`` and the body when it sends ``http.response.body``: two ``send`` system
calls and two TCP segments for every small JSON answer, which on loopback costs the server a
few per cent of an action's CPU. Here the connection's transport holds what is written until the
current pass of the event loop ends, then writes it at once: the head and the body an app sends
back to back go out together, and a streamed body (server-sent events) still leaves at every
pass, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeldWrites:
    """A transport that holds writes until the loop's current pass ends; everything else is the
    real transport's (closing sends what is held first; aborting drops it)."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """What ``interlock serve`` runs uvicorn with (``http=``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeldWrites(transport, self.loop))  # type: ignore[arg-type]


__all__ = ["OneWriteProtocol"]
