"""The embedded Interlock: one object that owns the database, the workflows and the pipeline."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection, Engine

from interlock._internal.approvals.service import ApprovalService
from interlock._internal.approvals.verifications import VerificationService
from interlock._internal.approvals.webhooks import targets_from_settings
from interlock._internal.audit.anchored import verify_with_settings
from interlock._internal.audit.chain import append_event
from interlock._internal.audit.verify import VerifyReport
from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.egress import EgressPolicy
from interlock._internal.gateway.models import (
    ActionResult,
    Decision,
    ModelCall,
    ModelCallResult,
    Run,
    RunView,
)
from interlock._internal.gateway.pipeline import Pipeline
from interlock._internal.gateway.recovery import recover_expired, resolve_unknown
from interlock._internal.gateway.runtime import WorkflowRuntime, build_runtime
from interlock._internal.gateway.transports.base import Transport
from interlock._internal.gateway.transports.http import HttpTransport
from interlock._internal.identity.agents import AgentStore
from interlock._internal.identity.backoff import TokenBackoff
from interlock._internal.identity.oidc import OidcService
from interlock._internal.identity.operators import OperatorStore
from interlock._internal.identity.signin_links import SignInLinks
from interlock._internal.identity.tokens import AccessToken, AgentPrincipal, TokenService, authenticate_agent
from interlock._internal.limits.breaker import CircuitBreakerRegistry, SharedCircuitBreakers
from interlock._internal.limits.ratelimit import RateLimiter
from interlock._internal.manifest.loader import LoadedManifest, load_manifest, load_manifest_text
from interlock._internal.manifest.models import HttpUpstream, Manifest
from interlock._internal.notify.notifier import Notifier
from interlock._internal.notify.targets import targets_from_settings as notification_targets
from interlock._internal.packages.service import PackageService
from interlock._internal.packages.signing import PackageKey
from interlock._internal.rollouts.model import Rollout
from interlock._internal.rollouts.service import RolloutService
from interlock._internal.runs.handoffs import UNKNOWN_RESOLUTIONS, Handoff, HandoffStore, Resolution
from interlock._internal.runs.store import RunStore
from interlock._internal.settings import Settings
from interlock._internal.store import migrate as migrations
from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, make_engine, reading, transaction
from interlock._internal.telemetry.metrics import Metrics
from interlock._internal.telemetry.tracing import Tracing, build_provider
from interlock.exceptions import ArgumentsInvalid, ConfigError, ConflictError, NotFound, PolicyError


class Interlock:
    """Interlock embedded in your process.

    >>> il = Interlock(Settings())                      # nothing happens until asked
    >>> il.migrate(); il.load_workflow("workflow.yaml")
    >>> creds = il.agents.create(
    ...     "triage-bot", workflow="support-triage", environment="production", actor="me"
    ... )
    >>> token = il.issue_token(creds.client_id, creds.client_secret)
    >>> run = il.start_run(token.token)
    >>> il.act(token.token, run.id, "tickets.get", {"ticket_id": "T-1001"}).status
    'executed'
    """

    def __init__(self, settings: Settings | None = None, *, manifests: Sequence[str | Path] = ()) -> None:
        self.settings = settings if settings is not None else Settings()
        self._runtimes: dict[str, WorkflowRuntime] = {}
        self._lock = threading.Lock()
        self._manifests = [*self.settings.manifests, *manifests]

    # ---- built when first needed -------------------------------------------------------------

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database, self.settings.storage)

    @cached_property
    def tokens(self) -> TokenService:
        return TokenService(self.settings.identity)

    @cached_property
    def agents(self) -> AgentStore:
        return AgentStore(self.engine)

    @cached_property
    def token_backoff(self) -> TokenBackoff:
        """Failed client-credential attempts per client id (the token endpoint's back-off)."""
        return TokenBackoff(self.engine, self.settings.server)

    @cached_property
    def operators(self) -> OperatorStore:
        return OperatorStore(self.engine)

    @cached_property
    def signin_links(self) -> SignInLinks:
        return SignInLinks(self.engine)

    @cached_property
    def runs(self) -> RunStore:
        return RunStore(self.engine)

    @cached_property
    def egress(self) -> EgressPolicy:
        """Where tools may connect (HTTP tools and MCP servers reached by url); deny by default."""
        return EgressPolicy.from_config(self.settings.egress.allow_hosts, self.settings.egress.allow_cidrs)

    @cached_property
    def http_transport(self) -> HttpTransport:
        """One HTTP client pool and set of circuit breakers for every workflow."""
        egress = self.egress
        # Breakers live in the database so that every replica sees the same ones.
        breaker = SharedCircuitBreakers(
            self.engine,
            failure_threshold=self.settings.breaker.failure_threshold,
            cooldown_s=self.settings.breaker.cooldown_s,
            on_open=self._breaker_opened,
        )
        return HttpTransport(egress=egress, breaker=breaker)

    def _breaker_opened(self, key: str, failures: int) -> None:
        """Record ``breaker.opened`` (once, by the replica that opened it) and pause the
        workflows whose manifest asks for it and that call this upstream."""
        with transaction(self.engine) as conn:
            append_event(
                conn,
                kind="breaker.opened",
                actor="interlock",
                data={"upstream": key, "failures": failures, "cooldown_s": self.settings.breaker.cooldown_s},
            )
        for runtime in self.workflows:
            manifest = runtime.manifest
            if manifest.circuit_breaker.on_open != "pause_workflow" or self.is_paused(manifest.name):
                continue
            if key in _http_upstream_keys(manifest):
                self.set_paused(
                    manifest.name,
                    paused=True,
                    actor="interlock",
                    reason=f"circuit breaker opened for {key} after {failures} consecutive failures",
                )

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.engine)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.engine, open_circuits=self._open_circuits)

    def _open_circuits(self) -> int:
        # Only if HTTP tools were ever set up: a scrape should not build the client pool.
        transport = self.__dict__.get("http_transport")
        return 0 if transport is None else transport.breaker.open_count()

    @cached_property
    def tracing(self) -> Tracing:
        """Spans go to OTLP when configured, else to the process's global tracer provider."""
        cfg = self.settings.telemetry
        provider = None
        if cfg.otlp_endpoint:
            provider = build_provider(service_name=cfg.service_name, otlp_endpoint=cfg.otlp_endpoint)
        return Tracing(tracer_provider=provider, capture_payloads=cfg.capture_payloads)

    @cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(
            engine=self.engine,
            runtimes=self.runtime,
            tokens=self.tokens,
            agents=self.agents,
            runs=self.runs,
            model_prices=self.settings.model_prices,
            rate_limiter=self.rate_limiter,
            tracing=self.tracing,
            metrics=self.metrics,
            budget_warn_ratio=self.settings.notifications.budget_warn_ratio,
            lease_margin_s=self.settings.recovery.lease_margin_s,
            rollouts=self.rollouts,
        )

    @cached_property
    def rollouts(self) -> RolloutService:
        """Candidate versions in shadow or as canaries: start, status, promote, abort."""
        return RolloutService(self)

    @cached_property
    def packages(self) -> PackageService:
        """Signed work packages: issue, verify, revoke; runs started with one are bound by it."""
        return PackageService(
            self.engine,
            PackageKey.from_seed(self.settings.packages.signing_seed),
            runtimes=self.runtime,
            max_ttl_s=self.settings.packages.max_ttl_s,
        )

    @cached_property
    def oidc(self) -> OidcService | None:
        """OpenID Connect sign-in for operators, when ``oidc.issuer`` and ``oidc.client_id`` are set."""
        if not self.settings.oidc.enabled:
            return None
        public = self.settings.server.public_url
        return OidcService(
            self.settings.oidc,
            self.engine,
            redirect_url=f"{public.rstrip('/')}/ui/sso/callback" if public else None,
        )

    @cached_property
    def notifications(self) -> Notifier:
        """Events a person must act on, sent to the configured webhooks, chat and ITSM targets."""
        cfg = self.settings.notifications
        return Notifier(
            self.engine,
            notification_targets(self.settings),
            public_url=self.settings.server.public_url,
            max_attempts=cfg.max_attempts,
            backoff_s=cfg.backoff_s,
        )

    @cached_property
    def approvals(self) -> ApprovalService:
        """Approvals waiting for people: list, decide, cancel, expire, and their webhooks."""
        return ApprovalService(
            self.engine,
            pipeline=self.pipeline,
            runtimes=self.runtime,
            webhooks=targets_from_settings(self.settings),
            public_url=self.settings.server.public_url,
        )

    @cached_property
    def verifications(self) -> VerificationService:
        """Approval requests routed to verifier agents: list, read, give a verdict."""
        return VerificationService(
            self.approvals, runtimes=self.runtime, model_prices=self.settings.model_prices
        )

    def start(self, *, migrate: bool = True) -> Interlock:
        """Migrate the database (unless ``migrate=False``: a server's workers, whose supervisor
        migrated it before starting them) and load the configured manifests."""
        if migrate:
            self.migrate()
        for path in self._manifests:
            self.load_workflow(path)
        return self

    def migrate(self) -> None:
        migrations.upgrade(self.engine)

    # ---- workflows ---------------------------------------------------------------------------

    def load_workflow(
        self,
        source: str | Path | LoadedManifest,
        *,
        actor: str = "system",
        transports: dict[str, Transport] | None = None,
    ) -> WorkflowRuntime:
        """Validate, compile and activate a manifest; its version is stored for the record.

        ``transports`` replace upstreams by kind (``"python"``, ``"http"``, ``"mcp"``, or ``"*"`` for
        every tool); the caller keeps ownership of them."""
        loaded = source if isinstance(source, LoadedManifest) else load_manifest(source)
        shared: dict[str, Transport] = dict(transports or {})
        if any(spec.upstream is not None and spec.upstream.kind == "http" for spec in loaded.manifest.tools):
            shared.setdefault("http", self.http_transport)
        # MCP servers declared by url answer to the same egress allowlist as HTTP tools.
        egress = (
            self.egress if any(server.url is not None for server in loaded.manifest.mcp_servers) else None
        )
        runtime = build_runtime(loaded, shared_transports=shared, egress=egress)
        try:
            self._store_version(loaded, runtime, actor=actor)
        except BaseException:
            runtime.close()
            raise
        with self._lock:
            old = self._runtimes.get(loaded.manifest.name)
            self._runtimes[loaded.manifest.name] = runtime
        if old is not None and old is not runtime:
            old.close()
        return runtime

    def _store_version(
        self, loaded: LoadedManifest, runtime: WorkflowRuntime, *, actor: str, activate: bool = True
    ) -> None:
        """Record the version (first replica wins) and, unless ``activate`` is False (a rollout's
        candidate), make it the workflow's active one."""
        now = time.time()
        with transaction(self.engine) as conn:
            if insert_ignore(
                conn,
                t.workflow_versions,
                {
                    "id": loaded.version_id,
                    "workflow": loaded.manifest.name,
                    "version": loaded.manifest.version,
                    "sha256": loaded.sha256,
                    "policy_sha256": runtime.compiled.sha256,
                    "source_path": str(loaded.path) if loaded.path else None,
                    "manifest": loaded.text,
                    "cedar_policies": runtime.compiled.text,
                    "created_at": now,
                },
            ):
                for spec in loaded.manifest.tools:
                    conn.execute(
                        t.tools.insert().values(
                            workflow_version_id=loaded.version_id,
                            name=spec.name,
                            verb=spec.verb,
                            traits=list(spec.traits),
                            definition=spec.model_dump(mode="json"),
                        )
                    )
                append_event(
                    conn,
                    kind="workflow.version_stored",
                    actor=actor,
                    workflow=loaded.manifest.name,
                    data={
                        "version_id": loaded.version_id,
                        "manifest_sha256": loaded.sha256,
                        "policy_sha256": runtime.compiled.sha256,
                    },
                )
            else:
                stored = conn.execute(
                    select(t.workflow_versions.c.policy_sha256).where(
                        t.workflow_versions.c.id == loaded.version_id
                    )
                ).scalar_one()
                if stored != runtime.compiled.sha256:
                    # The manifest text is the same but a .cedar file it names changed: decisions
                    # would cite a version whose stored policy is not the one in force.
                    raise PolicyError(
                        f"the policy files changed but the manifest did not; bump `version` in "
                        f"{loaded.path or loaded.manifest.name} so the new policy gets its own version",
                        file=str(loaded.path) if loaded.path else None,
                        field="version",
                    )
            if not activate:
                return
            current = conn.execute(
                select(t.workflows.c.active_version_id).where(t.workflows.c.name == loaded.manifest.name)
            ).first()
            if current is None:
                insert_ignore(
                    conn,
                    t.workflows,
                    {
                        "name": loaded.manifest.name,
                        "active_version_id": loaded.version_id,
                        "paused": False,
                        "updated_at": now,
                    },
                )
            elif current[0] != loaded.version_id:
                conn.execute(
                    update(t.workflows)
                    .where(t.workflows.c.name == loaded.manifest.name)
                    .values(active_version_id=loaded.version_id, updated_at=now)
                )
            if current is None or current[0] != loaded.version_id:
                append_event(
                    conn,
                    kind="workflow.activated",
                    actor=actor,
                    workflow=loaded.manifest.name,
                    data={
                        "version_id": loaded.version_id,
                        "previous": None if current is None else current[0],
                    },
                )

    def _serve(self, runtime: WorkflowRuntime) -> None:
        """Make an already stored and activated version this process's runtime for its workflow
        (a promoted rollout); the runtime it replaces stays with the rollouts, which close it."""
        with self._lock:
            self._runtimes[runtime.name] = runtime

    def runtime(self, workflow: str) -> WorkflowRuntime:
        runtime = self._runtimes.get(workflow)
        if runtime is None:
            raise NotFound(f"workflow {workflow!r} is not loaded on this server", code="unknown_workflow")
        return runtime

    @property
    def workflows(self) -> list[WorkflowRuntime]:
        return list(self._runtimes.values())

    def set_paused(self, workflow: str, *, paused: bool, actor: str, reason: str | None = None) -> None:
        """Kill switch: takes effect on the next action in every process sharing the database."""
        self.runtime(workflow)
        with transaction(self.engine) as conn:
            conn.execute(
                update(t.workflows)
                .where(t.workflows.c.name == workflow)
                .values(
                    paused=paused,
                    paused_by=actor if paused else None,
                    paused_reason=reason if paused else None,
                    updated_at=time.time(),
                )
            )
            append_event(
                conn,
                kind="workflow.paused" if paused else "workflow.resumed",
                actor=actor,
                workflow=workflow,
                data={"reason": reason},
            )
        if not paused:
            self.approvals.resume_held()  # approved actions held by the pause run now

    def pause(self, scope: str, key: str, *, actor: str, reason: str | None = None) -> None:
        """Pause a ``workflow``, an ``agent`` or a whole ``environment``: the next action anywhere
        is denied, and approved actions are held, until resumed."""
        if scope == "workflow":
            self.set_paused(key, paused=True, actor=actor, reason=reason)
            return
        if scope not in ("agent", "environment"):
            raise ArgumentsInvalid(
                f"cannot pause a {scope!r}; pause a workflow, agent or environment", field="scope"
            )
        with transaction(self.engine) as conn:
            insert_ignore(
                conn,
                t.pauses,
                {"scope": scope, "key": key, "paused_by": actor, "reason": reason, "created_at": time.time()},
            )
            append_event(
                conn, kind=f"{scope}.paused", actor=actor, data={"scope": scope, "key": key, "reason": reason}
            )

    def resume(self, scope: str, key: str, *, actor: str) -> None:
        if scope == "workflow":
            self.set_paused(key, paused=False, actor=actor)
            return
        with transaction(self.engine) as conn:
            gone = conn.execute(
                delete(t.pauses).where(t.pauses.c.scope == scope, t.pauses.c.key == key)
            ).rowcount
            if gone:
                append_event(conn, kind=f"{scope}.resumed", actor=actor, data={"scope": scope, "key": key})
        if gone:
            self.approvals.resume_held()

    def pauses(self) -> list[dict[str, Any]]:
        with reading(self.engine) as conn:
            rows = [dict(r) for r in conn.execute(select(t.pauses)).mappings()]
            rows += [
                {
                    "scope": "workflow",
                    "key": r["name"],
                    "paused_by": r["paused_by"],
                    "reason": r["paused_reason"],
                    "created_at": r["updated_at"],
                }
                for r in conn.execute(select(t.workflows).where(t.workflows.c.paused.is_(True))).mappings()
            ]
        return rows

    def workflow_state(self, workflow: str) -> dict[str, Any]:
        """The workflow's kill switch as stored: ``paused``, ``paused_by``, ``paused_reason`` and
        ``updated_at`` (when it was last paused or resumed); not paused when never stored."""
        query = select(
            t.workflows.c.paused,
            t.workflows.c.paused_by,
            t.workflows.c.paused_reason,
            t.workflows.c.updated_at,
        ).where(t.workflows.c.name == workflow)
        with reading(self.engine) as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return {"paused": False, "paused_by": None, "paused_reason": None, "updated_at": None}
        return {**row, "paused": bool(row["paused"])}

    def ping(self) -> None:
        """Raise :class:`StorageError` unless the database answers."""
        with reading(self.engine) as conn:
            conn.execute(select(1))

    def active_manifest(self, workflow: str) -> LoadedManifest | None:
        """The workflow's active manifest as stored (what a server loaded last), or None."""
        query = (
            select(
                t.workflow_versions.c.manifest, t.workflow_versions.c.source_path, t.workflow_versions.c.id
            )
            .select_from(
                t.workflows.join(
                    t.workflow_versions, t.workflow_versions.c.id == t.workflows.c.active_version_id
                )
            )
            .where(t.workflows.c.name == workflow)
        )
        with reading(self.engine) as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        source = Path(row.source_path) if row.source_path else None
        # Relative references in the manifest (policies, Python tools) resolve from where it was loaded.
        base_dir = source.parent if source is not None and source.parent.is_dir() else Path.cwd()
        return load_manifest_text(row.manifest, file=str(source or f"<{row.id}>"), base_dir=base_dir)

    def known_workflows(self) -> list[str]:
        """Workflows this database has an active version of, by name."""
        query = select(t.workflows.c.name).where(t.workflows.c.active_version_id.is_not(None))
        with reading(self.engine) as conn:
            return sorted(str(r[0]) for r in conn.execute(query))

    def load_active_workflow(self, workflow: str, *, actor: str) -> WorkflowRuntime:
        """Load the workflow's active version from the database, for a process that did not load
        its manifest file: the CLI deciding an approval or resolving a handoff runs the action
        through it, in this service, as the server would."""
        loaded = self.active_manifest(workflow)
        if loaded is None:
            raise NotFound(
                f"workflow {workflow!r} has no active version in this database", code="unknown_workflow"
            )
        return self.load_workflow(loaded, actor=actor)

    def is_paused(self, workflow: str) -> bool:
        with reading(self.engine) as conn:
            row = conn.execute(select(t.workflows.c.paused).where(t.workflows.c.name == workflow)).first()
        return bool(row and row[0])

    # ---- agents' side ------------------------------------------------------------------------

    def issue_token(
        self,
        client_id: str,
        client_secret: str,
        *,
        resources: Sequence[str] = (),
        issuer: str | None = None,
    ) -> AccessToken:
        """OAuth2 client credentials: a short-lived token scoped to the agent's workflow and environment
        (and, with RFC 8707 ``resources``, good only at those). ``issuer``: the authorization
        server's URL for ``iss`` (the token endpoint passes the one its metadata names)."""
        return self.tokens.exchange(
            client_id, client_secret, store=self.agents, resources=resources, issuer=issuer
        )

    def start_run(
        self,
        token: str,
        *,
        trigger: Any = None,
        started_by: str | None = None,
        package: str | None = None,
    ) -> Run:
        """Start a run. With ``package`` (a signed work package), every action of the run is also
        held to the package's tools and bounds, and the package cannot start another run."""
        principal = authenticate_agent(token, tokens=self.tokens, store=self.agents)
        runtime, rollout = self.rollouts.assignment(principal.workflow, self.runtime(principal.workflow))
        claims = None
        if package is not None:
            claims = self.packages.admit(
                package,
                agent_id=principal.agent_id,
                workflow=principal.workflow,
                environment=principal.environment,
                version_id=runtime.version_id,
            )

        def consume(conn: Connection, run_id: str) -> None:
            if claims is not None:
                self.packages.consume(conn, claims, run_id=run_id, actor=f"agent:{principal.agent_id}")

        return self.runs.create(
            workflow=principal.workflow,
            workflow_version_id=runtime.version_id,
            agent_id=principal.agent_id,
            environment=principal.environment,
            trigger=trigger,
            started_by=started_by,
            max_concurrent=runtime.manifest.budgets.max_concurrent_runs,
            package_id=None if claims is None else str(claims["jti"]),
            on_create=consume if claims is not None else None,
            assign=None if rollout is None else _assigner(rollout, principal.agent_id, trigger),
        )

    def finish_run(
        self, token: str, run_id: str, *, state: str = "completed", reason: str | None = None
    ) -> Run:
        """The agent ends its run: ``completed`` or ``failed``."""
        principal = authenticate_agent(token, tokens=self.tokens, store=self.agents)
        run = self.runs.get(run_id)
        if run.agent_id != principal.agent_id:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
        if state not in ("completed", "failed"):
            raise ArgumentsInvalid("an agent can end its run as completed or failed", field="state")
        if run.state != "running":
            raise ConflictError(f"run is {run.state}", code="run_not_active")
        ended = self.runs.finish(run_id, state=state, reason=reason, actor=f"agent:{principal.agent_id}")
        self.tracing.run_span(ended)
        return ended

    def report_model_call(
        self,
        token: str,
        run_id: str,
        *,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None = None,
        duration_ms: float | None = None,
        task: str | None = None,
    ) -> ModelCallResult:
        """Count a model call against the run's, agent's and workflow's budgets; with ``task``, check
        the model against that task class's tier (the manifest's ``models``)."""
        call = ModelCall(
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            duration_ms=duration_ms,
            task=task,
        )
        return self.pipeline.record_model_call(token, run_id, call)

    def act(
        self,
        token: str,
        run_id: str,
        tool: str,
        arguments: Any,
        *,
        idempotency_key: str | None = None,
        reasoning: str | None = None,
        confidence: float | None = None,
        evidence: Sequence[str] | None = None,
    ) -> ActionResult:
        """Submit one action through the pipeline. Decisions are results, not exceptions."""
        intent = Intent(
            tool=tool,
            arguments=arguments,
            idempotency_key=idempotency_key,
            reasoning=reasoning,
            confidence=confidence,
            evidence=tuple(evidence) if evidence else None,
        )
        return self.pipeline.submit(token, run_id, intent)

    def get_run(self, run_id: str) -> RunView:
        return self.runs.view(run_id)

    def check(
        self,
        *,
        workflow: str,
        agent: str,
        tool: str,
        arguments: Any,
        environment: str | None = None,
        confidence: float | None = None,
    ) -> Decision:
        """A dry-run decision: nothing executes and nothing is recorded."""
        return check_decision(
            self.runtime(workflow),
            agent=agent,
            tool=tool,
            arguments=arguments,
            environment=environment,
            confidence=confidence,
        )

    @cached_property
    def handoffs(self) -> HandoffStore:
        return HandoffStore(self.engine)

    def resolve_handoff(
        self,
        handoff_id: str,
        *,
        action: Resolution,
        actor: str,
        arguments: Any = None,
        comment: str | None = None,
        evidence: str | None = None,
    ) -> tuple[Handoff, ActionResult | None]:
        """A person decides an escalated run: resume it, resume it with the held action's arguments
        edited (the edited action then goes through the whole pipeline), or stop it.

        An outcome-unknown handoff (a call cut off when its process died) is resolved instead
        with ``happened`` (``evidence`` required), ``not_happened`` or ``retry`` (the call is made
        again with the same upstream idempotency key); the result is the agent's definitive
        answer for the action."""
        if action in UNKNOWN_RESOLUTIONS:
            result = resolve_unknown(
                self.pipeline,
                handoff_id,
                action=action,  # type: ignore[arg-type]
                actor=actor,
                evidence=evidence,
                comment=comment,
            )
            return self.handoffs.get(handoff_id), result
        if action == "resume_with_arguments" and arguments is None:
            raise ArgumentsInvalid("resume_with_arguments needs the edited arguments", field="arguments")
        handoff = self.handoffs.resolve(handoff_id, action=action, actor=actor, comment=comment)
        if action != "resume_with_arguments" or handoff.tool is None:
            return handoff, None
        run = self.runs.get(handoff.run_id)
        principal = AgentPrincipal(agent_id=run.agent_id, workflow=run.workflow, environment=run.environment)
        intent = Intent(tool=handoff.tool, arguments=arguments, reasoning=f"arguments edited by {actor}")
        return handoff, self.pipeline.submit_as(principal, run.id, intent)

    def recover(self) -> list[str]:
        """Turn calls whose lease expired (their process died mid-call) into outcome-unknown
        handoffs; housekeeping does this on every replica. Returns the step ids recovered here."""
        return recover_expired(self.engine, runtimes=self.runtime)

    def verify_audit(self) -> VerifyReport:
        """The chain, every signed checkpoint (stored and in the witness directory), and approvals."""
        return verify_with_settings(self.engine, self.settings.audit)

    # ---- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        for runtime in self._runtimes.values():
            runtime.close()
        self._runtimes.clear()
        if "rollouts" in self.__dict__:
            self.rollouts.close()
        if "approvals" in self.__dict__:
            self.approvals.close()  # stops the webhook worker
        if "notifications" in self.__dict__:
            self.notifications.close()
        if "http_transport" in self.__dict__:
            self.http_transport.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> Interlock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def check_decision(
    runtime: WorkflowRuntime,
    *,
    agent: str,
    tool: str,
    arguments: Any,
    environment: str | None = None,
    confidence: float | None = None,
) -> Decision:
    spec = runtime.manifest.agent(agent)
    if environment is None:
        if spec is None:
            raise ConfigError(f"agent {agent!r} is not declared in {runtime.name}; pass an environment")
        environment = spec.environment
    intent = Intent(tool=tool, arguments=arguments, confidence=confidence)
    return evaluate(runtime, agent_id=agent, environment=environment, intent=intent).decision


def _assigner(rollout: Rollout, agent_id: str, trigger: Any) -> Callable[[Connection, str], tuple[str, str]]:
    """The version a new run gets in a running rollout, decided from its id (stable per run)."""

    def assign(_conn: Connection, run_id: str) -> tuple[str, str]:
        canary = rollout.includes(run_id=run_id, agent_id=agent_id, trigger=trigger)
        return (rollout.candidate_version_id if canary else rollout.active_version_id), rollout.id

    return assign


def _http_upstream_keys(manifest: Manifest) -> set[str]:
    """The breaker keys of every HTTP upstream a workflow's tools reach, in any environment (an
    absolute tool URL, or the base URL of its system's bindings)."""
    keys: set[str] = set()
    for spec in manifest.tools:
        if not isinstance(spec.upstream, HttpUpstream):
            continue
        urls = [spec.upstream.url]
        system = manifest.system(spec.system) if spec.system is not None else None
        if system is not None:
            urls += [b.url for b in system.bindings.values() if b.url is not None]
        for url in urls:
            if url.startswith(("http://", "https://")):
                with contextlib.suppress(Exception):
                    keys.add(CircuitBreakerRegistry.key_for(url.split("{", 1)[0]))
    return keys
