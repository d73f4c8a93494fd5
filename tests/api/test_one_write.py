"""``interlock serve``'s HTTP protocol (``api/one_write.py``) sends a response's head and body in
one write, and still streams, keeps connections alive and closes them as uvicorn does."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from interlock._internal.api.one_write import OneWriteProtocol, _HeldWrites
from servers import LiveServer

BODY = b'{"status":"executed"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i in range(3):
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % i, "more_body": True})
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    if scope["path"] == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


@pytest.fixture
def port() -> Iterator[int]:
    with LiveServer(app, http=OneWriteProtocol, lifespan="off") as url:
        yield int(url.rsplit(":", 1)[1])


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


def test_answers_on_a_kept_alive_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(3):
            sock.sendall(request("/"))
            time.sleep(0.2)
            data = sock.recv(65536, socket.MSG_DONTWAIT)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), data
            assert body == BODY, data


def test_a_streamed_body_leaves_in_order_as_it_is_sent(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request("/stream"))
        sock.settimeout(5)
        received = b""
        first_event_at = None
        started = time.monotonic()
        while not received.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
            if first_event_at is None and b"data: 0" in received:
                first_event_at = time.monotonic() - started
        assert first_event_at is not None
        assert first_event_at < 0.1  # not held back until the stream ends (0.15 s in)
        events = [line.strip() for line in received.split(b"\r\n") if line.startswith(b"data:")]
        assert events == [b"data: 0", b"data: 1", b"data: 2"]


def test_connection_close_sends_the_answer_first(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request("/close"))
        sock.settimeout(5)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(BODY)


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_what_is_written_in_one_pass_of_the_loop_is_one_write() -> None:
    async def main() -> Recording:
        real = Recording()
        held = _HeldWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        held.write(b"HTTP/1.1 200 OK\r\n\r\n")
        held.write(b"body")
        assert real.writes == []
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        held.write(b"next")
        await asyncio.sleep(0)
        held.write(b"last")
        held.close()  # sends what is held, then closes
        assert held.get_extra_info("peername") == "info:peername"
        return real

    real = asyncio.run(main())
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next", b"last"]
    assert real.closed
