"""Issue, read, revoke and admit work packages.

A package is issued once (row + ``package.issued`` audit event), then either starts exactly one run
(``issued`` → ``used`` with a conditional UPDATE in the run's own transaction, so two runners
presenting the same package at once start one run between them) or is revoked. An expired, used,
revoked or tampered package starts nothing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.ids import new_id
from interlock._internal.packages.models import FORMAT, PackageRequest, WorkPackage, usage_limits
from interlock._internal.packages.signing import ISSUER, PackageKey, verify_package
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import (
    ArgumentsInvalid,
    AuthenticationError,
    ConflictError,
    NotFound,
    TokenScopeError,
)


class PackageService:
    def __init__(
        self,
        engine: Engine,
        key: PackageKey,
        *,
        runtimes: Callable[[str], WorkflowRuntime],
        max_ttl_s: int = 7 * 86_400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.key = key
        self._runtime = runtimes
        self.max_ttl_s = max_ttl_s
        self._clock = clock

    @property
    def public_pem(self) -> str:
        return self.key.public_pem

    # ---- issuing -----------------------------------------------------------------------------

    def issue(self, request: PackageRequest, *, actor: str) -> WorkPackage:
        runtime = self._runtime(request.workflow)
        manifest = runtime.manifest
        agent = manifest.agent(request.agent)
        if agent is None:
            raise ArgumentsInvalid(
                f"agent {request.agent!r} is not declared in {manifest.name}", field="agent"
            )
        environment = request.environment or agent.environment
        if environment != agent.environment:
            raise ArgumentsInvalid(
                f"agent {request.agent!r} runs in {agent.environment}, not {environment}", field="environment"
            )
        for name, grant in request.tools.items():
            spec = manifest.tool(name)
            if spec is None:
                raise ArgumentsInvalid(f"tool {name!r} is not in {manifest.name}", field=f"tools.{name}")
            known = spec.input_schema.get("properties") or {}
            for arg in grant.arguments:
                if arg not in known:
                    takes = ", ".join(sorted(known)) or "none"
                    raise ArgumentsInvalid(
                        f"tool {name} has no argument {arg!r} (it takes {takes})",
                        field=f"tools.{name}.arguments.{arg}",
                    )
        if request.ttl_s > self.max_ttl_s:
            raise ArgumentsInvalid(
                f"ttl_s={request.ttl_s} is longer than packages.max_ttl_s={self.max_ttl_s}", field="ttl_s"
            )
        now = self._clock()
        package_id = new_id("pkg")
        claims: dict[str, Any] = {
            "format": FORMAT,
            "iss": ISSUER,
            "jti": package_id,
            "nonce": secrets.token_hex(16),
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + request.ttl_s,
            "workflow": manifest.name,
            "manifest_version": request.manifest_version or runtime.version_id,
            "agent": request.agent,
            "environment": environment,
            "task": request.task,
            "tools": {name: grant.model_dump(exclude_none=True) for name, grant in request.tools.items()},
        }
        if request.budget_usd is not None:
            claims["budget_usd"] = request.budget_usd
        token = self.key.sign(claims)
        row = {
            "id": package_id,
            "nonce": claims["nonce"],
            "workflow": manifest.name,
            "agent_id": request.agent,
            "environment": environment,
            "manifest_version": claims["manifest_version"],
            "claims": claims,
            "token": token,
            "state": "issued",
            "issued_by": actor,
            "created_at": now,
            "expires_at": float(claims["exp"]),
        }
        with transaction(self.engine) as conn:
            conn.execute(t.work_packages.insert().values(**row))
            append_event(
                conn,
                kind="package.issued",
                actor=actor,
                workflow=manifest.name,
                data={
                    "package": package_id,
                    "agent": request.agent,
                    "environment": environment,
                    "manifest_version": claims["manifest_version"],
                    "tools": sorted(claims["tools"]),
                    "expires_at": claims["exp"],
                    "key_id": self.key.key_id,
                },
            )
        return WorkPackage(**row)

    # ---- reading and revoking ----------------------------------------------------------------

    def get(self, package_id: str) -> WorkPackage:
        with reading(self.engine) as conn:
            row = (
                conn.execute(select(t.work_packages).where(t.work_packages.c.id == package_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"unknown work package {package_id!r}", code="unknown_package")
        return _package(row)

    def list(self, *, workflow: str | None = None, limit: int = 200) -> list[WorkPackage]:
        query = select(t.work_packages).order_by(t.work_packages.c.created_at.desc()).limit(limit)
        if workflow is not None:
            query = query.where(t.work_packages.c.workflow == workflow)
        with reading(self.engine) as conn:
            return [_package(r) for r in conn.execute(query).mappings()]

    def revoke(self, package_id: str, *, actor: str, reason: str | None = None) -> WorkPackage:
        """Revoke a package: it starts no run, and a run started with it is denied every next action."""
        package = self.get(package_id)
        now = self._clock()
        with transaction(self.engine) as conn:
            changed = conn.execute(
                update(t.work_packages)
                .where(t.work_packages.c.id == package_id, t.work_packages.c.state != "revoked")
                .values(state="revoked", revoked_at=now, revoked_by=actor, revoked_reason=reason)
            ).rowcount
            if changed:
                append_event(
                    conn,
                    kind="package.revoked",
                    actor=actor,
                    workflow=package.claims["workflow"],
                    run_id=package.run_id,
                    data={"package": package_id, "reason": reason},
                )
        return self.get(package_id)

    def verify(self, token: str) -> dict[str, Any]:
        """Signature and expiry, as a runner checks them offline, plus whether it was used or revoked."""
        claims = verify_package(token, self.key.public, now=self._clock())
        package = self.get(str(claims["jti"]))
        return {"claims": claims, "state": package.state, "run_id": package.run_id}

    # ---- a run starts with a package ---------------------------------------------------------

    def admit(
        self, token: str, *, agent_id: str, workflow: str, environment: str, version_id: str
    ) -> dict[str, Any]:
        """The claims of a package this agent may start a run with now (nothing is written)."""
        claims = verify_package(token, self.key.public, now=self._clock())
        package = self.get(str(claims["jti"]))
        if package.token != token:
            raise AuthenticationError("work package does not match the one issued", code="package_invalid")
        _refuse_state(package)
        if (claims["agent"], claims["workflow"], claims["environment"]) != (agent_id, workflow, environment):
            raise TokenScopeError(
                f"work package {package.id} is for {claims['agent']} in "
                f"{claims['workflow']}/{claims['environment']}, not {agent_id} in {workflow}/{environment}",
                code="package_scope",
            )
        if claims["manifest_version"] != version_id:
            raise ConflictError(
                f"work package {package.id} was issued for {claims['manifest_version']}; "
                f"the active version is {version_id}",
                code="package_manifest_mismatch",
            )
        return claims

    def consume(self, conn: Connection, claims: dict[str, Any], *, run_id: str, actor: str) -> None:
        """Inside the run's creating transaction: mark the package used by ``run_id``, exactly once."""
        now = self._clock()
        used = conn.execute(
            update(t.work_packages)
            .where(
                t.work_packages.c.id == claims["jti"],
                t.work_packages.c.state == "issued",
                t.work_packages.c.expires_at > now,
            )
            .values(state="used", used_at=now, run_id=run_id)
        ).rowcount
        if used != 1:
            raise AuthenticationError(
                f"work package {claims['jti']} was already used, revoked or has expired", code="package_used"
            )
        for key, limit in usage_limits(claims).items():
            conn.execute(
                t.package_usage.insert().values(package_id=claims["jti"], key=key, used=0, max_total=limit)
            )
        append_event(
            conn,
            kind="package.used",
            actor=actor,
            workflow=claims["workflow"],
            run_id=run_id,
            data={"package": claims["jti"], "nonce": claims["nonce"]},
        )

    def usage(self, package_id: str) -> dict[str, dict[str, int]]:
        with reading(self.engine) as conn:
            rows = conn.execute(
                select(t.package_usage).where(t.package_usage.c.package_id == package_id)
            ).mappings()
            return {r["key"]: {"used": int(r["used"]), "max_total": int(r["max_total"])} for r in rows}


def _refuse_state(package: WorkPackage) -> None:
    if package.state == "revoked":
        raise AuthenticationError(f"work package {package.id} was revoked", code="package_revoked")
    if package.state == "used":
        raise AuthenticationError(
            f"work package {package.id} was already used by run {package.run_id}", code="package_used"
        )


def _package(row: Any) -> WorkPackage:
    return WorkPackage(**{k: row[k] for k in WorkPackage.model_fields})


__all__ = ["PackageService"]
