"""Interlock's exceptions: one root, translated at every boundary.

::

    InterlockError
    ├── ConfigError                 settings or files that cannot be used
    │   └── ManifestError           a workflow manifest is invalid (file, line, field)
    │       └── PolicyError         a Cedar policy fails to parse or validate
    ├── StorageError                the database failed (SQLAlchemy errors are translated here)
    ├── AuthenticationError         no, bad, expired or revoked credentials
    │   └── TokenScopeError         a token used outside its workflow or environment
    ├── PermissionDenied            an operator lacks the role for an operation
    ├── NotFound                    unknown run, tool, agent, workflow or approval
    ├── ArgumentsInvalid            arguments fail the tool's input schema (names the field)
    ├── ActionDenied                the pipeline denied an action (carries the decision)
    ├── ApprovalPending             an action waits for a person (carries the approval id)
    ├── LimitExceeded               budget, step cap or rate limit (carries retry_after)
    ├── ConflictError               a concurrent change won (idempotency key in flight, lock)
    ├── UpstreamError               a tool's upstream failed (HTTP, MCP, Python callable)
    └── AuditIntegrityError         the audit chain does not verify (names the first bad event)

Foreign errors (cedarpy, httpx, MCP, SQLAlchemy, PyJWT) never escape the public API: they are
re-raised as one of these with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interlock._internal.gateway.models import ActionResult, Decision


class InterlockError(Exception):
    """Root of every error Interlock raises. ``code`` is stable and machine-readable."""

    code: str = "interlock_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}


class ConfigError(InterlockError):
    code = "config_error"


class ManifestError(ConfigError):
    """A manifest problem, located as precisely as possible.

    ``str(err)`` reads ``file:line: field: message`` so editors and CI logs can jump to it.
    """

    code = "manifest_invalid"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        code: str | None = None,
    ):
        self.file = file
        self.line = line
        self.field = field
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        elif line:
            where = f"line {line}: "
        text = f"{where}{field}: {message}" if field else f"{where}{message}"
        super().__init__(text, code=code, details={"file": file, "line": line, "field": field})
        self.reason = message


class PolicyError(ManifestError):
    code = "policy_invalid"


class StorageError(InterlockError):
    code = "storage_error"


class AuthenticationError(InterlockError):
    code = "unauthenticated"


class TokenScopeError(AuthenticationError):
    code = "token_scope"


class PermissionDenied(InterlockError):
    code = "forbidden"


class NotFound(InterlockError):
    code = "not_found"


class ArgumentsInvalid(InterlockError):
    code = "invalid_arguments"

    def __init__(self, message: str, *, field: str, details: dict[str, Any] | None = None):
        super().__init__(message, details={"field": field, **(details or {})})
        self.field = field


class ActionDenied(InterlockError):
    """The action did not run and will not. ``result`` is the recorded outcome when there is one."""

    code = "denied"
    result: ActionResult | None = None

    @property
    def decision(self) -> Decision | None:
        """The pipeline's decision (kind, reasons, policies), when the action reached it."""
        return self.result.decision if self.result is not None else None


class ApprovalPending(InterlockError):
    """The action waits for a person to approve it; wait on ``approval_id``, then ask again with the
    same idempotency key (or read the approval's outcome)."""

    code = "pending_approval"
    result: ActionResult | None = None

    def __init__(self, message: str, *, approval_id: str, details: dict[str, Any] | None = None):
        super().__init__(message, details={"approval_id": approval_id, **(details or {})})
        self.approval_id = approval_id


class LimitExceeded(InterlockError):
    code = "limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message, code=code, details={"retry_after": retry_after})
        self.retry_after = retry_after


class ConflictError(InterlockError):
    code = "conflict"


class UpstreamError(InterlockError):
    code = "upstream_error"


class AuditIntegrityError(InterlockError):
    code = "audit_broken"


__all__ = [
    "ActionDenied",
    "ApprovalPending",
    "ArgumentsInvalid",
    "AuditIntegrityError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "InterlockError",
    "LimitExceeded",
    "ManifestError",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "StorageError",
    "TokenScopeError",
    "UpstreamError",
]
