"""OAuth 2.0 discovery: where this Interlock is, what it protects, and how to get a token for it.

- RFC 9728 protected-resource metadata: ``/.well-known/oauth-protected-resource/mcp`` for the MCP
  gateway, ``…/v1`` for the REST API, and the bare address for the whole server;
- RFC 8414 authorization-server metadata at ``/.well-known/oauth-authorization-server``:
  Interlock is its own authorization server, with one grant (client credentials) at
  ``POST /oauth/token``;
- RFC 8707 resource indicators: the names a token may be bound to (:func:`resources`).

Every URL is built from ``server.public_url`` when it is set, else from the request's own scheme
and ``Host`` (fine on one machine; behind a proxy, set ``public_url`` so that names agree).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.types import Scope

from interlock._internal.settings import Settings

router = APIRouter()

MCP_PATH = "/mcp"
API_PATH = "/v1"
TOKEN_PATH = "/oauth/token"
AUTHORIZE_PATH = "/oauth/authorize"
PROTECTED_RESOURCE_WELL_KNOWN = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_WELL_KNOWN = "/.well-known/oauth-authorization-server"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def canonical_url(url: str) -> str:
    """``url`` in one spelling: lower-case scheme and host, no default port, no trailing ``/``.

    Raises :class:`ValueError` for anything but an absolute http(s) URL without query or fragment
    (RFC 8707 §2: a resource indicator has no fragment; Interlock's have no query either).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.fragment or parts.query:
        raise ValueError(f"not an absolute http(s) URL without query or fragment: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"a resource URL carries no credentials: {url!r}")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port  # ValueError for a port out of range
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))


def base_url(settings: Settings, *, scheme: str, host: str | None) -> str:
    """This Interlock's address: ``server.public_url``, else what the request was sent to."""
    if settings.server.public_url:
        return canonical_url(settings.server.public_url)
    try:
        return canonical_url(f"{scheme}://{host or 'localhost'}")
    except ValueError:  # a Host header no URL can hold: name nothing after it
        return f"{scheme}://localhost"


def scope_base_url(scope: Scope, settings: Settings) -> str:
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
    return base_url(settings, scheme=str(scope.get("scheme", "http")), host=host)


def request_base_url(request: Request, settings: Settings) -> str:
    return scope_base_url(request.scope, settings)


def resources(base: str) -> dict[str, str]:
    """The protected resources a token may name (RFC 8707), by what they are."""
    return {"server": base, "mcp": base + MCP_PATH, "api": base + API_PATH}


def mcp_audience(base: str) -> frozenset[str]:
    """Resources whose tokens the MCP gateway accepts: itself and the whole server."""
    return frozenset((base, base + MCP_PATH))


def api_audience(base: str) -> frozenset[str]:
    """Resources whose tokens the REST API accepts: itself and the whole server."""
    return frozenset((base, base + API_PATH))


def resource_metadata_url(base: str, resource_path: str = "") -> str:
    """Where RFC 9728 metadata for ``base + resource_path`` lives (the path goes after the
    well-known part, §3.1)."""
    parts = urlsplit(base)
    return urlunsplit(
        (parts.scheme, parts.netloc, PROTECTED_RESOURCE_WELL_KNOWN + parts.path + resource_path, "", "")
    )


def issuer_url(request: Request) -> str:
    """The authorization server's issuer identifier (RFC 8414 §2), which agent tokens issued at
    ``/oauth/token`` carry as ``iss`` (RFC 9068 §2.2): ``identity.issuer`` when it is an http(s)
    URL, else this server's address."""
    settings = _settings(request)
    try:
        return canonical_url(settings.identity.issuer)
    except ValueError:
        return request_base_url(request, settings)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.interlock.settings
    return settings


def _protected_resource(request: Request, path: str, name: str) -> JSONResponse:
    base = request_base_url(request, _settings(request))
    body = {
        "resource": base + path,
        "authorization_servers": [base],
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    }
    return JSONResponse(body, headers={"Cache-Control": "max-age=300", "Vary": "Host"})


@router.get(PROTECTED_RESOURCE_WELL_KNOWN, include_in_schema=False)
async def protected_resource_server(request: Request) -> JSONResponse:
    """RFC 9728 metadata for the whole server (its MCP gateway and its REST API)."""
    return _protected_resource(request, "", "Interlock")


@router.get(PROTECTED_RESOURCE_WELL_KNOWN + MCP_PATH, include_in_schema=False)
async def protected_resource_mcp(request: Request) -> JSONResponse:
    """RFC 9728 metadata for the MCP gateway."""
    return _protected_resource(request, MCP_PATH, "Interlock MCP gateway")


@router.get(PROTECTED_RESOURCE_WELL_KNOWN + API_PATH, include_in_schema=False)
async def protected_resource_api(request: Request) -> JSONResponse:
    """RFC 9728 metadata for the REST API."""
    return _protected_resource(request, API_PATH, "Interlock REST API")


@router.get(AUTHORIZATION_SERVER_WELL_KNOWN, include_in_schema=False)
async def authorization_server(request: Request) -> JSONResponse:
    """RFC 8414 metadata: Interlock issues its own agent tokens, by client credentials only."""
    base = request_base_url(request, _settings(request))
    body = {
        "issuer": issuer_url(request),
        "token_endpoint": base + TOKEN_PATH,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        # No grant uses the authorization endpoint, so it supports no response type (RFC 8414 §2
        # still asks for the list, and common clients refuse metadata without the endpoint).
        "authorization_endpoint": base + AUTHORIZE_PATH,
        "response_types_supported": [],
    }
    return JSONResponse(body, headers={"Cache-Control": "max-age=300", "Vary": "Host"})


@router.get(AUTHORIZE_PATH, include_in_schema=False)
async def authorize(request: Request) -> JSONResponse:
    """RFC 6749 §4.1.2.1: there is no redirect URI to send the error to, so it is the answer."""
    return JSONResponse(
        {
            "error": "unsupported_response_type",
            "error_description": (
                "Interlock issues agent tokens only by client credentials at POST /oauth/token"
            ),
        },
        status_code=400,
        headers={"Cache-Control": "no-store"},
    )


__all__ = [
    "API_PATH",
    "MCP_PATH",
    "api_audience",
    "base_url",
    "canonical_url",
    "issuer_url",
    "mcp_audience",
    "request_base_url",
    "resource_metadata_url",
    "resources",
    "router",
    "scope_base_url",
]
