"""The HTTP status of each Interlock error: the API's error responses and the console's pages
answer with the same one."""

from __future__ import annotations

from interlock.exceptions import (
    ActionDenied,
    ArgumentsInvalid,
    AuthenticationError,
    ConfigError,
    ConflictError,
    InterlockError,
    LimitExceeded,
    ManifestError,
    NotFound,
    PermissionDenied,
    StorageError,
    TokenScopeError,
    UpstreamError,
)

# Most specific first: TokenScopeError is an AuthenticationError, ManifestError a ConfigError.
_STATUS: tuple[tuple[type[InterlockError], int], ...] = (
    (TokenScopeError, 403),
    (AuthenticationError, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (ArgumentsInvalid, 422),
    (ActionDenied, 403),
    (LimitExceeded, 429),
    (ConflictError, 409),
    (ManifestError, 400),  # a manifest the request carried
    (ConfigError, 500),  # the server's own configuration
    (StorageError, 503),
    (UpstreamError, 502),
)


def status_for(exc: InterlockError) -> int:
    """The HTTP status of an Interlock error; anything unmapped is a 500."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 500


__all__ = ["status_for"]
