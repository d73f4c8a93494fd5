"""Interlock: the control plane between AI agents and the systems they act on.

Everything public lives here; implementation lives in ``interlock._internal``. Names are
resolved lazily so ``import interlock`` does no work.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from interlock.exceptions import (
    ActionDenied,
    ApprovalPending,
    ArgumentsInvalid,
    AuditIntegrityError,
    AuthenticationError,
    ConfigError,
    ConflictError,
    InterlockError,
    LimitExceeded,
    ManifestError,
    NotFound,
    PermissionDenied,
    PolicyError,
    StorageError,
    TokenScopeError,
    UpstreamError,
)

if TYPE_CHECKING:
    from interlock._internal.gateway.models import ActionResult, Decision, Reason, Run, RunView, Step
    from interlock._internal.manifest.loader import LoadedManifest, load_manifest
    from interlock._internal.manifest.models import Manifest
    from interlock._internal.packages.signing import verify_package
    from interlock._internal.sdk.aclient import AsyncClient
    from interlock._internal.sdk.client import Client
    from interlock._internal.sdk.governed import governed
    from interlock._internal.service import Interlock
    from interlock._internal.settings import Settings

__version__ = "0.1.0"

_LAZY = {
    "ActionResult": "interlock._internal.gateway.models",
    "AsyncClient": "interlock._internal.sdk.aclient",
    "Client": "interlock._internal.sdk.client",
    "Decision": "interlock._internal.gateway.models",
    "Interlock": "interlock._internal.service",
    "LoadedManifest": "interlock._internal.manifest.loader",
    "Manifest": "interlock._internal.manifest.models",
    "Reason": "interlock._internal.gateway.models",
    "Run": "interlock._internal.gateway.models",
    "RunView": "interlock._internal.gateway.models",
    "Settings": "interlock._internal.settings",
    "Step": "interlock._internal.gateway.models",
    "governed": "interlock._internal.sdk.governed",
    "load_manifest": "interlock._internal.manifest.loader",
    "verify_package": "interlock._internal.packages.signing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'interlock' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ActionDenied",
    "ActionResult",
    "ApprovalPending",
    "ArgumentsInvalid",
    "AsyncClient",
    "AuditIntegrityError",
    "AuthenticationError",
    "Client",
    "ConfigError",
    "ConflictError",
    "Decision",
    "Interlock",
    "InterlockError",
    "LimitExceeded",
    "LoadedManifest",
    "Manifest",
    "ManifestError",
    "NotFound",
    "PermissionDenied",
    "PolicyError",
    "Reason",
    "Run",
    "RunView",
    "Settings",
    "Step",
    "StorageError",
    "TokenScopeError",
    "UpstreamError",
    "__version__",
    "governed",
    "load_manifest",
    "verify_package",
]
