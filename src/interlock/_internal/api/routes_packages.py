"""Signed work packages over HTTP.

====================================  =========================  ===========================================
route                                 who                        notes
====================================  =========================  ===========================================
``POST   /v1/packages``               admin or owner             the request body of ``interlock packages
                                                                 issue``; 201 with the signed package
``GET    /v1/packages``               operator (any role)        ``?workflow=``; their workflows only
``GET    /v1/packages/public-key``    anyone                     the PEM runners verify packages with
``POST   /v1/packages/verify``        operator (any role)        ``{package}``: signature, expiry, state
``GET    /v1/packages/{id}``          operator (any role)        claims, state, run, usage of the totals
``POST   /v1/packages/{id}/revoke``   admin or owner             ``{reason?}``
====================================  =========================  ===========================================

A runner presents a package with ``POST /v1/runs {"package": …}``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.api.deps import InterlockDep, OperatorDep
from interlock._internal.api.schemas import WorkflowQuery, error_responses
from interlock._internal.packages.models import PackageRequest, WorkPackage
from interlock._internal.permissions import ALL_ROLES, PACKAGE_ISSUERS, actor, require_any_role

router = APIRouter(prefix="/v1", tags=["packages"])

PackagePath = Annotated[str, Path(pattern=r"^pkg_[0-9a-f]{1,60}$", description="The package id.")]


class PackageView(WorkPackage):
    usage: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Cumulative bounds: key → used and max_total (micro-units; calls)."
    )


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str = Field(max_length=64_000)


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=1000, pattern=r"^[^\x00]*$")


@router.post(
    "/packages",
    status_code=201,
    response_model=WorkPackage,
    responses=error_responses(400, 401, 403, 404, 422),
)
def issue_package(body: PackageRequest, operator: OperatorDep, interlock: InterlockDep) -> WorkPackage:
    """Issue and sign a work package for one agent's run."""
    require_any_role(operator, PACKAGE_ISSUERS, body.workflow)
    return interlock.packages.issue(body, actor=actor(operator))


@router.get("/packages", response_model=list[WorkPackage], responses=error_responses(401, 403, 422))
def list_packages(
    operator: OperatorDep,
    interlock: InterlockDep,
    workflow: WorkflowQuery = None,
) -> list[WorkPackage]:
    found = interlock.packages.list(workflow=workflow)
    return [p for p in found if any(operator.can(role, p.claims["workflow"]) for role in ALL_ROLES)]


@router.get("/packages/public-key", response_class=PlainTextResponse)
def package_public_key(interlock: InterlockDep) -> str:
    """The Ed25519 public key (PEM) that verifies every package this Interlock signs."""
    return interlock.packages.public_pem


@router.post("/packages/verify", responses=error_responses(400, 401, 403, 404, 422))
def verify_package(body: VerifyRequest, operator: OperatorDep, interlock: InterlockDep) -> dict[str, Any]:
    """Signature and expiry (401 ``package_invalid`` / ``package_expired`` when not), and the state."""
    result = interlock.packages.verify(body.package)
    require_any_role(operator, ALL_ROLES, result["claims"]["workflow"])
    return result


@router.get("/packages/{package_id}", response_model=PackageView, responses=error_responses(401, 403, 404))
def show_package(package_id: PackagePath, operator: OperatorDep, interlock: InterlockDep) -> PackageView:
    package = interlock.packages.get(package_id)
    require_any_role(operator, ALL_ROLES, package.claims["workflow"])
    return PackageView(**package.model_dump(), usage=interlock.packages.usage(package_id))


@router.post(
    "/packages/{package_id}/revoke",
    response_model=WorkPackage,
    responses=error_responses(400, 401, 403, 404, 422),
)
def revoke_package(
    package_id: PackagePath, operator: OperatorDep, interlock: InterlockDep, body: RevokeRequest | None = None
) -> WorkPackage:
    """Revoke: the package starts no run, and its run is denied every next action."""
    require_any_role(operator, PACKAGE_ISSUERS, interlock.packages.get(package_id).claims["workflow"])
    return interlock.packages.revoke(package_id, actor=actor(operator), reason=body.reason if body else None)
