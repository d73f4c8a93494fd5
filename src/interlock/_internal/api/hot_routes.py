"""The per-action routes, answered before FastAPI: ``POST /v1/runs/{run_id}/actions`` and
``POST /v1/runs/{run_id}/model-calls``.

Every governed action crosses the HTTP layer, and FastAPI's way across it (the middleware stack,
a match against every route, the dependency solver, a request object, the standard library's
JSON, a response object) cost about as much server CPU as the pipeline itself. :class:`HotRoutes`
takes the ordinary request straight to the service instead: a JSON body within
``server.max_body_bytes``, a bearer agent token good for this API, and a body the route's own
request model accepts. The body is read once, parsed once (orjson) and validated once (the same
pydantic model); the service call runs on a worker thread (:mod:`.offload`: the hop without
anyio's extras); the answer is the route's own status, headers and bytes
(:func:`~.routes_runs.action_payload`).

Nothing else is decided here. No token or a bad one, another media type, a body that does not
parse or validate, an ``Idempotency-Key`` header out of bounds or disagreeing with the body's key,
a NUL in the URL, an over-long run id: the request goes, its body replayed, to the FastAPI app,
whose routes stay the reference and answer exactly as before (status, error shape, headers), and
describe both endpoints in the OpenAPI document. Nothing has happened when a request is handed
over, so each request is still served once.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interlock._internal.api.body_limit import refuse_too_large
from interlock._internal.api.deps import ApiMetrics
from interlock._internal.api.errors import (
    interlock_error_response,
    internal_error_response,
    json_bytes,
    status_for,
)
from interlock._internal.api.oauth import API_PATH, api_audience, resource_metadata_url, scope_base_url
from interlock._internal.api.offload import Offload
from interlock._internal.api.routes_runs import action_payload
from interlock._internal.api.schemas import ActionRequest
from interlock._internal.gateway.models import ModelCall
from interlock._internal.identity.secrets import OPERATOR_TOKEN_PREFIX
from interlock._internal.identity.tokens import check_audience
from interlock._internal.service import Interlock
from interlock.exceptions import InterlockError

log = logging.getLogger("interlock.api")

_RUNS = API_PATH + "/runs/"
ACTIONS = "/actions"
MODEL_CALLS = "/model-calls"
# The bounds the routes declare: RunIdPath, and the Idempotency-Key header parameter.
_MAX_RUN_ID = 200
_MAX_KEY = 200
_HEADERS = frozenset((b"authorization", b"content-length", b"content-type", b"idempotency-key"))
# orjson reads an integer past 64 bits as a float, where the standard library (which the route
# uses) keeps it exact; a body with a run of 19 digits anywhere is read by the standard library.
_LONG_DIGITS = re.compile(rb"\d{19}")
_JSON_TYPE = re.compile(r"application/json\s*(;.*)?", re.IGNORECASE | re.DOTALL)


class HotRoutes:
    """Serves the ordinary action and model-call request; hands every other one to ``fallback``."""

    def __init__(
        self, interlock: Interlock, metrics: ApiMetrics, *, max_body_bytes: int, pipeline_threads: int
    ) -> None:
        self.interlock = interlock
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.offload = Offload(width=pipeline_threads)

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Ends the worker threads when the app stops (a lifespan hook of the app factory)."""
        try:
            yield
        finally:
            self.offload.close()

    def match(self, scope: Scope) -> tuple[str, str] | None:
        """``(route, run_id)`` when ``scope`` is a request for one of the two routes, else None."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(_RUNS) or scope.get("root_path"):
            return None
        if path.endswith(ACTIONS):
            route = ACTIONS
        elif path.endswith(MODEL_CALLS):
            route = MODEL_CALLS
        else:
            return None
        run_id = path[len(_RUNS) : -len(route)]
        if (
            not run_id
            or len(run_id) > _MAX_RUN_ID
            or "/" in run_id
            or "\x00" in run_id
            or b"%00" in scope.get("query_string", b"")
        ):
            return None
        return route, run_id

    async def serve(
        self, match: tuple[str, str], scope: Scope, receive: Receive, send: Send, *, fallback: ASGIApp
    ) -> None:
        route, run_id = match
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _HEADERS and name not in headers:
                headers[name] = value
        body = await self._body(scope, receive, send, headers.get(b"content-length"))
        if body is None:  # refused as too large, or the client went away
            return
        request = _parse(route, headers.get(b"content-type"), body)
        token = self._agent_token(headers.get(b"authorization"), scope) if request is not None else None
        key = headers.get(b"idempotency-key")
        header_key = key.decode("latin-1") if key is not None else None
        if (
            request is None
            or token is None
            or (header_key is not None and route == ACTIONS and not _key_ok(header_key, request))
        ):
            await fallback(scope, _replay(body, receive), send)
            return
        try:
            if isinstance(request, ActionRequest):
                status, payload, extra = await self._act(token, run_id, request, header_key)
            else:
                assert isinstance(request, ModelCall)
                result = await self.offload.run(
                    partial(
                        self.interlock.report_model_call,
                        token,
                        run_id,
                        model=request.model,
                        input_tokens=request.input_tokens,
                        output_tokens=request.output_tokens,
                        cost_usd=request.cost_usd,
                        duration_ms=request.duration_ms,
                        task=request.task,
                    )
                )
                status, payload, extra = 200, json_bytes(result), {}
        except InterlockError as exc:
            metadata = None
            if status_for(exc) == 401:
                base = scope_base_url(scope, self.interlock.settings)
                metadata = resource_metadata_url(base, API_PATH)
            await interlock_error_response(exc, resource_metadata=metadata)(scope, receive, send)
            return
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await internal_error_response()(scope, receive, send)
            return
        raw = [(b"content-length", b"%d" % len(payload)), (b"content-type", b"application/json")]
        raw.extend((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items())
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    async def _act(
        self, token: str, run_id: str, request: ActionRequest, header_key: str | None
    ) -> tuple[int, bytes, dict[str, str]]:
        key = header_key if request.idempotency_key is None else request.idempotency_key
        try:
            result = await self.offload.run(
                partial(
                    self.interlock.act,
                    token,
                    run_id,
                    request.tool,
                    request.arguments,
                    idempotency_key=key,
                    reasoning=request.reasoning,
                    confidence=request.confidence,
                    evidence=request.evidence,
                )
            )
        except InterlockError as exc:
            self.metrics.action_errors.labels(code=exc.code).inc()
            raise
        return action_payload(result)

    async def _body(self, scope: Scope, receive: Receive, send: Send, declared: bytes | None) -> bytes | None:
        """The whole body, or None after refusing it (413, as :class:`.BodyLimit` does) or when
        the client disconnected before sending it."""
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await refuse_too_large(scope["path"], self.max_body_bytes, send)
            return None
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await refuse_too_large(scope["path"], self.max_body_bytes, send)
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    def _agent_token(self, authorization: bytes | None, scope: Scope) -> str | None:
        """The bearer token when it is an agent access token good for this API (as the route's
        dependency checks it), else None."""
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or token.startswith(OPERATOR_TOKEN_PREFIX):
            return None
        try:
            claims = self.interlock.tokens.verify(token)
            if claims.resources:
                check_audience(claims, api_audience(scope_base_url(scope, self.interlock.settings)))
        except Exception:  # the route says why (and answers 500 for what is not an InterlockError)
            return None
        return token


def _parse(route: str, content_type: bytes | None, body: bytes) -> BaseModel | None:
    """The validated request model, or None for anything the route itself should answer."""
    if content_type is None or not _JSON_TYPE.fullmatch(content_type.decode("latin-1")):
        return None
    try:
        data: Any = json.loads(body) if _LONG_DIGITS.search(body) else orjson.loads(body)
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError are ValueErrors
        return None
    if not isinstance(data, dict):
        return None
    model: type[BaseModel] = ActionRequest if route == ACTIONS else ModelCall
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _key_ok(header_key: str, request: BaseModel) -> bool:
    """Whether the ``Idempotency-Key`` header passes the route's checks: within its bounds, and
    the body's key, if any, the same."""
    if not isinstance(request, ActionRequest) or not 1 <= len(header_key) <= _MAX_KEY:
        return False
    return request.idempotency_key is None or request.idempotency_key == header_key


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the fallback: the body already read, then whatever comes next."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


__all__ = ["ACTIONS", "MODEL_CALLS", "HotRoutes"]
