"""Refuse request bodies over ``server.max_body_bytes`` on /v1 and /oauth with 413, before any
byte of them is parsed.

A declared ``Content-Length`` over the limit is refused at once, without reading the body. A body
without one (chunked) is read up to the limit and refused as soon as it passes it; only a body
within the limit reaches the routes.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LIMITED = ("/v1/", "/oauth/")


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(_LIMITED):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None:
            if declared > self.max_bytes:
                await refuse_too_large(path, self.max_bytes, send)
                return
            await self.app(scope, receive, send)
            return
        # No length declared: take the body in, up to the limit, before any route sees it.
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await refuse_too_large(path, self.max_bytes, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


async def refuse_too_large(path: str, max_bytes: int, send: Send) -> None:
    """Answer 413 and close the connection: the rest of the body is never read."""
    message = f"request body is larger than {max_bytes} bytes"
    body: dict[str, Any]
    if path.startswith("/oauth/"):  # the token endpoint speaks OAuth's error shape
        body = {"error": "invalid_request", "error_description": message}
    else:
        body = {"error": {"code": "body_too_large", "message": message}}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or an unreadable one)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["BodyLimit", "declared_length", "refuse_too_large"]
