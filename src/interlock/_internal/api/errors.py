"""Errors become HTTP responses here, and only here.

Every error body has one shape, ``{"error": {"code": "<stable>", "message": "<human>", ...details}}``,
whether it comes from Interlock's own exceptions, from request validation, from routing (404/405)
or from a bug (500). Server-side failures (5xx) never echo exception text: a database error can
carry a host name and a configuration error a URL with a password, so the client gets a stable
code and a generic sentence while the log gets the details.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interlock._internal.api.oauth import API_PATH, request_base_url, resource_metadata_url
from interlock._internal.http_status import status_for
from interlock.exceptions import (
    InterlockError,
    LimitExceeded,
)

log = logging.getLogger("interlock.api")

_SERVER_MESSAGES = {
    503: "the database is not answering; retry shortly",
    502: "the tool's upstream failed",
}
MISSING_TOKEN = "unauthenticated"
_GENERIC_500 = "internal error; the server log has the details"
# FastAPI and Starlette raise HTTPException for routing and for bodies they cannot parse.
_ROUTING_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    415: "unsupported_media_type",
}


JSON_MEDIA_TYPE = "application/json"


def json_bytes(value: BaseModel | dict[str, Any] | list[Any]) -> bytes:
    """``value`` as compact UTF-8 JSON: a model by its own (compiled) serializer, anything else by
    orjson. What orjson refuses (an integer past 64 bits, a key that is not a string) goes through
    the standard library, as a ``JSONResponse`` would have sent it."""
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def internal_error_response() -> JSONResponse:
    """The 500 every unexpected failure gets: a stable code and a sentence, never the exception."""
    return JSONResponse(error_body("internal_error", _GENERIC_500), status_code=500)


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The one error shape. Details never overwrite ``code`` or ``message``."""
    extra = {k: v for k, v in jsonable_encoder(details).items() if k not in ("code", "message")}
    return {"error": {"code": code, "message": message, **extra}}


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds (rounded up, at least 1), or nothing when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def interlock_error_response(exc: InterlockError, *, resource_metadata: str | None = None) -> JSONResponse:
    """The error's response; a 401 carries a Bearer challenge naming ``resource_metadata``, the
    RFC 9728 metadata of the resource asked for, from which a client finds where to get a token."""
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 401:
        # RFC 6750 §3: no error attribute when the request carried no credentials at all.
        challenge = 'Bearer realm="interlock"'
        if resource_metadata is not None:
            challenge += f', resource_metadata="{resource_metadata}"'
        headers["WWW-Authenticate"] = (
            challenge if exc.code == MISSING_TOKEN else challenge + ', error="invalid_token"'
        )
    if isinstance(exc, LimitExceeded):
        headers.update(retry_after_header(exc.retry_after))
    if status >= 500:
        log.error("request failed with %s (%s): %s", status, exc.code, exc.message, exc_info=exc)
        if status == 503:
            headers["Retry-After"] = "1"
        return JSONResponse(
            error_body(exc.code, _SERVER_MESSAGES.get(status, _GENERIC_500)),
            status_code=status,
            headers=headers,
        )
    return JSONResponse(error_body(exc.code, exc.message, **exc.details), status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """("body", "evidence", 3) → ("evidence.3", "body")."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        return ".".join(parts[1:]) or parts[0], parts[0]
    return ".".join(parts) or "request", "body"


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        field, where = _field(err.get("loc", ()))
        # A forbidden extra key is reported at the key itself, so the message names it.
        problems.append(
            {
                "field": field,
                "in": where,
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "invalid")),
            }
        )
    first = problems[0] if problems else {"field": "request", "in": "body", "message": "invalid request"}
    message = f"{first['field']}: {first['message']}"
    return JSONResponse(
        error_body("invalid_request", message, field=first["field"], errors=problems), status_code=422
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; called once by :func:`~interlock._internal.api.app.create_app`."""

    async def on_interlock_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InterlockError)
        metadata = None
        if status_for(exc) == 401 and request.url.path.startswith(API_PATH + "/"):
            base = request_base_url(request, request.app.state.interlock.settings)
            metadata = resource_metadata_url(base, API_PATH)
        return interlock_error_response(exc, resource_metadata=metadata)

    async def on_validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error_response(exc)

    async def on_http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _ROUTING_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(InterlockError, on_interlock_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_middleware(RejectNulInUrl)
    app.add_middleware(CatchAll)


class RejectNulInUrl:
    """A URL carrying U+0000 (``%00``) is refused before routing: no identifier or name can hold one,
    and PostgreSQL cannot even compare text with it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")
        ):
            body = error_body("invalid_request", "the URL must not contain NUL (%00) characters", field="url")
            await JSONResponse(body, status_code=422)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class CatchAll:
    """The last resort: any other exception becomes a 500 in the one error shape, without a trace.

    A middleware rather than an ``Exception`` handler: Starlette runs that handler and then
    re-raises, which makes uvicorn drop the client's keep-alive connection after the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for a clean answer; let the server close the connection
                raise
            await internal_error_response()(scope, receive, send)


__all__ = [
    "JSON_MEDIA_TYPE",
    "CatchAll",
    "RejectNulInUrl",
    "error_body",
    "install_error_handlers",
    "interlock_error_response",
    "internal_error_response",
    "json_bytes",
    "retry_after_header",
    "status_for",
]
