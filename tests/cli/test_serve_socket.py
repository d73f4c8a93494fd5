"""The socket `interlock serve` listens on."""

from __future__ import annotations

import socket

from interlock._internal.cli.serve import bind
from servers import free_port


def test_connections_are_accepted_with_nagle_off() -> None:
    # A response written in two parts (head, then body; every SSE event) must not wait for the
    # client's delayed ACK.
    listener = bind("127.0.0.1", free_port())
    try:
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert client.getsockname() == accepted.getpeername()
    finally:
        listener.close()
