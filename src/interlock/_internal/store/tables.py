"""SQLAlchemy Core tables. Every table and query here runs on SQLite and PostgreSQL alike.

JSON payloads are stored as text (``JSONText``) so both engines store byte-identical canonical
JSON; the payload columns (``Payload``) are encrypted at rest when a data key is configured
(``encryption.py``); money is stored in integer micro-dollars so sums are exact on both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from interlock._internal.store import json_text
from interlock._internal.store.encryption import Payload

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class JSONText(TypeDecorator[Any]):
    """JSON stored as compact text with sorted keys, identical on every engine."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json_text.dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json_text.loads(value)


# Timestamps are float seconds since the epoch (UTC): portable, sortable, cheap.
def _ts(name: str, *, nullable: bool = False) -> Column[Any]:
    return Column(name, Float, nullable=nullable)


workflows = Table(
    "workflows",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("active_version_id", String(300), nullable=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("paused_by", String(200), nullable=True),
    Column("paused_reason", Text, nullable=True),
    _ts("updated_at"),
)

workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("id", String(300), primary_key=True),  # name@version#sha12
    Column("workflow", String(200), nullable=False, index=True),
    Column("version", String(50), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    Column("source_path", Text, nullable=True),
    Column("manifest", Text, nullable=False),
    Column("cedar_policies", Text, nullable=False),
    _ts("created_at"),
)

tools = Table(
    "tools",
    metadata,
    Column("workflow_version_id", String(300), ForeignKey("workflow_versions.id"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("verb", String(20), nullable=False),
    Column("traits", JSONText, nullable=False),
    Column("definition", JSONText, nullable=False),
)

agents = Table(
    "agents",
    metadata,
    Column("id", String(200), primary_key=True),  # the client_id
    Column("workflow", String(200), nullable=False, index=True),
    Column("environment", String(100), nullable=False),
    Column("secret_hash", String(128), nullable=False),
    Column("status", String(20), nullable=False, default="active"),  # active | revoked
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
    Column("revoked_by", String(200), nullable=True),
    _ts("last_seen_at", nullable=True),
)

operators = Table(
    "operators",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("roles", JSONText, nullable=False),
    Column("workflows", JSONText, nullable=True),  # None = every workflow
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("status", String(20), nullable=False, default="active"),
    _ts("created_at"),
    # Console sessions carry the generation they were issued under; signing out or revoking the
    # operator bumps it, which ends every session on every replica at its next request.
    Column("session_generation", Integer, nullable=False, default=0, server_default="0"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workflow", String(200), nullable=False, index=True),
    Column("workflow_version_id", String(300), nullable=False),
    Column("agent_id", String(200), nullable=False, index=True),
    Column("environment", String(100), nullable=False),
    Column("state", String(20), nullable=False),  # running | completed | failed | escalated | stopped
    Column("state_reason", Text, nullable=True),
    Column("trigger", Payload("runs.trigger"), nullable=True),
    Column("started_by", String(200), nullable=True),
    Column("steps", Integer, nullable=False, default=0),
    Column("tool_calls", Integer, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0, server_default="0"),
    _ts("started_at"),
    _ts("ended_at", nullable=True),
    Column("package_id", String(64), nullable=True),  # the work package the run was started with
    Column("rollout_id", String(64), nullable=True),  # the rollout running when the run started
)

steps = Table(
    "steps",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), ForeignKey("runs.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(20), nullable=False),  # tool | model | retrieval
    Column("tool", String(200), nullable=True),
    Column("verb", String(20), nullable=True),
    Column("status", String(30), nullable=False),  # executed | denied | pending_approval | failed | escalated
    Column("decision_id", String(64), nullable=True),
    Column("args_hash", String(64), nullable=True),
    Column("arguments", Payload("steps.arguments"), nullable=True),  # redacted
    Column("result", Payload("steps.result"), nullable=True),  # redacted
    Column("error", Text, nullable=True),
    Column("reasoning", Text, nullable=True),
    Column("confidence", Float, nullable=True),
    Column("evidence", JSONText, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("data_classes", JSONText, nullable=True),  # classes this step brought into its run
    _ts("created_at"),
    # A read answered from the cache: the step whose upstream call fetched the answer.
    Column("cached_from", String(64), nullable=True),
    UniqueConstraint("run_id", "seq", name="uq_steps_run_seq"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=True, index=True),
    Column("step_id", String(64), nullable=True),
    Column("agent_id", String(200), nullable=True),
    Column("workflow", String(200), nullable=True, index=True),
    Column("environment", String(100), nullable=True),
    Column("tool", String(200), nullable=True),
    Column("verb", String(20), nullable=True),
    Column("decision", String(20), nullable=False),  # allow | deny | require_approval | escalate
    Column("reasons", JSONText, nullable=False),
    Column("policy_ids", JSONText, nullable=False),
    Column("risk", JSONText, nullable=False),
    Column("args_hash", String(64), nullable=True),
    Column("arguments", Payload("decisions.arguments"), nullable=True),  # redacted; kept for what-if replays
    Column("manifest_version", String(300), nullable=True),
    Column("policy_version", String(64), nullable=True),
    Column("confidence", Float, nullable=True),
    Column("binding", JSONText, nullable=True),  # the system binding the action resolved to
    Column("data_classes", JSONText, nullable=True),  # classes the run carried at the decision
    _ts("created_at"),
    Column("package_id", String(64), nullable=True),
    Index("ix_decisions_created", "created_at"),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("step_id", String(64), nullable=False),
    Column("decision_id", String(64), nullable=False),
    Column("workflow", String(200), nullable=False, index=True),
    Column("agent_id", String(200), nullable=False),
    Column("tool", String(200), nullable=False),
    Column("verb", String(20), nullable=False),
    Column("args_hash", String(64), nullable=False),
    Column("arguments", Payload("approvals.arguments"), nullable=True),  # redacted, for display
    Column("idempotency_key", String(200), nullable=True),
    # The exact arguments, kept only while the approval is open: the one payload stored before
    # redaction, because an approved action must run with exactly what was approved.
    Column("payload", Payload("approvals.payload"), nullable=True),
    Column("state", String(20), nullable=False),  # pending | approved | rejected | expired | cancelled
    Column("reasons", JSONText, nullable=False),
    Column("package", Payload("approvals.package"), nullable=False),
    Column("quorum", Integer, nullable=False, default=1),
    _ts("expires_at"),
    _ts("created_at"),
    _ts("decided_at", nullable=True),
    Column("decided_by", JSONText, nullable=True),
    Column("comment", Text, nullable=True),
    Column("execution", String(20), nullable=True),  # None | executing | held | done | refused
    Column(
        "outcome", Payload("approvals.outcome"), nullable=True
    ),  # the ActionResult once executed (redacted)
    # While ``executing``: when the claim lapses if its process died before journaling the call.
    _ts("lease_expires_at", nullable=True),
    # The verifier agent the request was routed to, and where verification stands:
    # None (no verifier) | awaiting | settled | escalated (a person decides).
    Column("verifier", String(200), nullable=True),
    Column("verification", String(20), nullable=True),
    Index("ix_approvals_state", "state"),
    Index("ix_approvals_verifier", "verifier", "verification"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("agent_id", String(200), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("args_hash", String(64), nullable=False),
    Column("state", String(20), nullable=False),  # in_flight | done
    Column("step_id", String(64), nullable=True),
    Column(
        "outcome", Payload("idempotency.outcome"), nullable=True
    ),  # the redacted ActionResult returned to the agent
    _ts("created_at"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    _ts("ts"),
    Column("kind", String(50), nullable=False),
    Column("actor", String(200), nullable=True),
    Column("workflow", String(200), nullable=True),
    Column("run_id", String(64), nullable=True, index=True),
    Column("body", Text, nullable=False),  # canonical JSON of every hashed field
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # How the body was canonicalised: 2 = RFC 8785, 1 = the legacy form (logs before migration 0008).
    Column("hash_format", SmallInteger, nullable=False, default=2, server_default="1"),
)

# One row: the chain's tip. Writers lock it, so appends serialize across processes.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# Failed client-credential attempts per client id, shared by every replica: after a few failures
# /oauth/token answers 429 with Retry-After until ``blocked_until``, doubling each time.
token_failures = Table(
    "token_failures",
    metadata,
    Column("client_id", String(200), primary_key=True),
    Column("failures", Integer, nullable=False),
    _ts("first_at"),
    _ts("blocked_until"),
)

__all__ = [
    "JSONText",
    "agents",
    "approval_verdicts",
    "approval_votes",
    "approvals",
    "audit_checkpoints",
    "audit_events",
    "audit_head",
    "budget_counters",
    "cache_entries",
    "circuit_breakers",
    "decisions",
    "executions",
    "handoffs",
    "idempotency",
    "leader_leases",
    "metadata",
    "notification_cursor",
    "notification_deliveries",
    "operators",
    "package_usage",
    "pauses",
    "rate_limits",
    "resource_locks",
    "runs",
    "signin_links",
    "steps",
    "token_failures",
    "tools",
    "value_counters",
    "value_holds",
    "webhook_deliveries",
    "work_packages",
    "workflow_versions",
    "workflows",
]

# Rate-limit counters, one row per (scope, key, window length, window start). A hit is one atomic
# upsert-and-increment, so a limit holds across replicas; expires_at lets old windows go.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("scope", String(50), primary_key=True),
    Column("key", String(400), primary_key=True),
    Column("window_s", Integer, primary_key=True, autoincrement=False),
    Column("window_start", BigInteger, primary_key=True, autoincrement=False),
    Column("count", Integer, nullable=False),
    Column("max_count", Integer, nullable=False),  # the limit in force at the latest hit
    _ts("expires_at"),
    Index("ix_rate_limits_expires_at", "expires_at"),
)

# Budget counters: one row per (scope, key, period), e.g. ("agent_day", "triage-bot", "2026-11-21").
# Reservations add to reserved_* with a conditional UPDATE that refuses to pass the limit, so a
# budget holds with any number of concurrent writers on either engine.
budget_counters = Table(
    "budget_counters",
    metadata,
    Column("scope", String(30), primary_key=True),  # run | agent_day | workflow_day | workflow_runs
    Column("key", String(300), primary_key=True),
    Column("period", String(20), primary_key=True),  # "" for run scope, else the UTC day
    Column("used_micros", BigInteger, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    Column("used_tokens", BigInteger, nullable=False, default=0),
    Column("used_steps", BigInteger, nullable=False, default=0),
    Column("used_tool_calls", BigInteger, nullable=False, default=0),
    _ts("updated_at"),
    _ts("warned_at", nullable=True),  # when "budget nearly spent" was announced for this period
)

# Kill switches below the workflow: an agent or a whole environment (workflow pauses live on
# the workflows row). Read with the run on every action, so they hold on the next action anywhere.
pauses = Table(
    "pauses",
    metadata,
    Column("scope", String(20), primary_key=True),  # agent | environment
    Column("key", String(200), primary_key=True),
    Column("paused_by", String(200), nullable=False),
    Column("reason", Text, nullable=True),
    _ts("created_at"),
)

# What a stop rule hands to a person: resume, resume with edited arguments, or stop.
handoffs = Table(
    "handoffs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    Column("step_id", String(64), nullable=True),
    Column("workflow", String(200), nullable=False, index=True),
    Column("tool", String(200), nullable=True),
    Column("arguments", Payload("handoffs.arguments"), nullable=True),  # redacted, for display
    Column("reason_code", String(50), nullable=False),
    Column("message", Text, nullable=False),
    Column("state", String(20), nullable=False),  # open | resumed | stopped
    _ts("created_at"),
    _ts("resolved_at", nullable=True),
    Column("resolved_by", String(200), nullable=True),
    Column("resolution", JSONText, nullable=True),
)

# Resource locks from a tool's `lock` key: a record one run is changing, held until the run ends
# or the hold expires.
resource_locks = Table(
    "resource_locks",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("run_id", String(64), nullable=False, index=True),
    _ts("acquired_at"),
    _ts("expires_at"),
)

# Leader leases: which process holds a duty every replica could do but one should (housekeeping).
# A holder renews its row before ``expires_at``; once that passes, any process may take it over.
leader_leases = Table(
    "leader_leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(200), nullable=False),
    _ts("acquired_at"),
    _ts("expires_at"),
)

Index("ix_steps_run_args", steps.c.run_id, steps.c.tool, steps.c.args_hash)

# Signed audit checkpoints: (seq, tip hash, Merkle root over event hashes 1..seq), one row per
# checkpoint and signing key. ``frontier`` holds the roots of the perfect subtrees left of seq, so
# the next checkpoint extends the tree from here instead of rereading the whole log.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("key_id", String(64), primary_key=True),
    _ts("ts"),
    Column("tip_hash", String(64), nullable=False),
    Column("merkle_root", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("frontier", JSONText, nullable=False),
    # The signed statement's type; checkpoints from before migration 0008 are ".../v1".
    Column("type", String(60), nullable=False, default="interlock.audit.checkpoint/v2"),
)

# One row per operator vote on an approval: quorum counts distinct operators, and the primary key
# makes a second vote by the same person impossible on either engine.
approval_votes = Table(
    "approval_votes",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("operator_id", String(200), primary_key=True),
    Column("vote", String(10), nullable=False),  # approve | reject
    Column("comment", Text, nullable=True),
    _ts("created_at"),
)

# A verifier agent's verdict on an approval routed to it: one per approval, bound to the hash of
# the arguments it judged, with whether policy let it settle the approval and its model cost.
approval_verdicts = Table(
    "approval_verdicts",
    metadata,
    Column("approval_id", String(64), primary_key=True),
    Column("verifier", String(200), nullable=False),
    Column("verdict", String(10), nullable=False),  # approve | reject | escalate
    Column("args_hash", String(64), nullable=False),
    Column("reasoning", Text, nullable=True),  # redacted
    Column("settles", Boolean, nullable=False),
    Column("code", String(40), nullable=False),  # why it settles or not (policy/verify.py)
    Column("policy_ids", JSONText, nullable=False),
    Column("model", String(200), nullable=True),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("step_id", String(64), nullable=True),  # the run step that carries its cost
    _ts("created_at"),
)

# Each webhook delivery attempt series, for the record and for retries.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("event", String(50), nullable=False),
    Column("approval_id", String(64), nullable=True, index=True),
    Column("url", Text, nullable=False),
    Column("payload", Payload("webhook_deliveries.payload"), nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    _ts("created_at"),
    _ts("next_attempt_at", nullable=True),
    _ts("delivered_at", nullable=True),
)

# Signed work packages: what an operator (or CI job) allowed one agent to do in one run. ``state``
# moves issued → used (exactly once, when a run starts with it) or → revoked.
work_packages = Table(
    "work_packages",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("nonce", String(64), nullable=False, unique=True),
    Column("workflow", String(200), nullable=False, index=True),
    Column("agent_id", String(200), nullable=False),
    Column("environment", String(100), nullable=False),
    Column("manifest_version", String(300), nullable=False),
    Column("claims", JSONText, nullable=False),
    Column("token", Text, nullable=False),  # the signed JWS, as handed out
    Column("state", String(20), nullable=False),  # issued | used | revoked
    Column("issued_by", String(200), nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
    _ts("used_at", nullable=True),
    Column("run_id", String(64), nullable=True),
    _ts("revoked_at", nullable=True),
    Column("revoked_by", String(200), nullable=True),
    Column("revoked_reason", Text, nullable=True),
)

# Cumulative bounds of a package (an argument's total, a tool's calls, the budget), in integer
# micro-units. A reservation is one conditional UPDATE that refuses to pass ``max_total``, so a
# bound holds with any number of replicas acting at once.
package_usage = Table(
    "package_usage",
    metadata,
    Column("package_id", String(64), primary_key=True),
    Column("key", String(400), primary_key=True),
    Column("used", BigInteger, nullable=False),
    Column("max_total", BigInteger, nullable=False),
)

# Notifications to people (webhooks, chat, tickets), one row per (audit event, target). The id is
# derived from both, so replicas that notice the same event insert one row between them.
notification_deliveries = Table(
    "notification_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("target", String(200), nullable=False),
    Column("kind", String(20), nullable=False),  # webhook | slack | ticket
    Column("event_seq", BigInteger, nullable=False),
    Column("event_kind", String(50), nullable=False),
    Column("run_id", String(64), nullable=True),
    Column("payload", Payload("notification_deliveries.payload"), nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("response", Text, nullable=True),  # e.g. the ticket id the ITSM answered with
    _ts("created_at"),
    _ts("next_attempt_at", nullable=True),
    _ts("delivered_at", nullable=True),
    Index("ix_notification_deliveries_due", "status", "next_attempt_at"),
)

# How far the notifier has read the audit log (one row, id 1).
notification_cursor = Table(
    "notification_cursor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
)

# One-time console sign-in links (``interlock operators signin-link``, the link ``serve`` prints),
# kept by the SHA-256 of the code so that any replica redeems them and a database dump holds none.
signin_links = Table(
    "signin_links",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("operator_id", String(200), nullable=False),
    Column("created_by", String(200), nullable=False),
    _ts("created_at"),
    _ts("expires_at"),
    _ts("used_at", nullable=True),
    Index("ix_signin_links_expires_at", "expires_at"),
)

# The execution journal: one row per upstream call, written with the reservation (state
# ``executing`` and a lease) before the call leaves, finished with the outcome after it. An expired
# lease means the process died mid-call: housekeeping turns it into ``unknown`` for a person.
# ``upstream_key`` is the idempotency key the upstream sees, derived from the action; it is unique,
# so no path can start a second call for the same action.
executions = Table(
    "executions",
    metadata,
    Column("id", String(64), primary_key=True),  # the step id of the call
    Column("run_id", String(64), nullable=False, index=True),
    Column("workflow", String(200), nullable=False),
    Column("agent_id", String(200), nullable=False),
    Column("tool", String(200), nullable=False),
    Column("args_hash", String(64), nullable=False),
    Column("upstream_key", String(100), nullable=False, unique=True),
    Column("idempotency_key", String(200), nullable=True),  # the agent's
    Column("approval_id", String(64), nullable=True),
    Column("seq", Integer, nullable=False),
    # executing | done | failed | unrecorded | unknown | happened | not_happened
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
    Column("decision", JSONText, nullable=False),
    # The exact arguments while the outcome is open (for a person's "retry now"); cleared once
    # the outcome is recorded, like an approval's payload.
    Column("payload", Payload("executions.payload"), nullable=True),
    Column("scopes", JSONText, nullable=True),  # budget scopes reserved, [[scope, key, period], ...]
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("resolution", JSONText, nullable=True),
    _ts("lease_expires_at", nullable=True),
    _ts("created_at"),
    _ts("finished_at", nullable=True),
    Index("ix_executions_state_lease", "state", "lease_expires_at"),
)

# Circuit breakers every replica shares: consecutive failures per upstream, when it opened, and
# until when one replica's half-open trial call holds the slot.
circuit_breakers = Table(
    "circuit_breakers",
    metadata,
    Column("key", String(400), primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    _ts("opened_at", nullable=True),
    _ts("trial_until", nullable=True),
    _ts("updated_at"),
)


# Value limits (the sum of an argument over a window): one counter per (workflow, limit, key,
# period), reserved with a conditional UPDATE like budgets; each action's share is a hold, settled
# (used) or released with its outcome.
value_counters = Table(
    "value_counters",
    metadata,
    Column("workflow", String(200), primary_key=True),
    Column("limit_id", String(120), primary_key=True),
    Column("key", String(400), primary_key=True),  # the scope and the `per` arguments' values
    Column("period", String(20), primary_key=True),  # the UTC hour, day, ISO week or month
    Column("used_micros", BigInteger, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    _ts("updated_at"),
)
value_holds = Table(
    "value_holds",
    metadata,
    Column("step_id", String(64), primary_key=True),
    Column("limit_id", String(120), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("key", String(400), nullable=False),
    Column("period", String(20), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("state", String(10), nullable=False),  # reserved | used | released
    _ts("created_at"),
)

# Cached answers of idempotent reads, shared by every replica: one row per (tool, scope, record),
# where scope is the run's id (scope: run) or "" (scope: workflow) and record the hash of the
# environment and the key arguments. Rows with scope "*" are invalidation marks for one record
# (or, with record "*", the whole tool): an answer is served only while fresh and fetched after
# every mark over it, so a read that raced a write is never served after the write.
cache_entries = Table(
    "cache_entries",
    metadata,
    Column("workflow", String(200), primary_key=True),
    Column("tool", String(200), primary_key=True),
    Column("scope", String(64), primary_key=True),
    Column("record", String(64), primary_key=True),
    Column("result", Payload("cache_entries.result"), nullable=True),  # redacted, like every stored result
    Column("step_id", String(64), nullable=True),  # the step whose call fetched it
    _ts("fetched_at"),
    _ts("expires_at"),
    _ts("invalidated_at", nullable=True),
    Index("ix_cache_entries_expires_at", "expires_at"),
)

# A candidate manifest version on trial beside the active one: in shadow (judged, never enforced)
# or as a canary (enforced for a share of new runs, or named agents or triggers). ``live`` is 1
# while it runs and NULL after, so the unique constraint allows one running rollout per workflow.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("workflow", String(200), nullable=False),
    Column("candidate_version_id", String(300), nullable=False),
    Column("active_version_id", String(300), nullable=False),
    Column("mode", String(20), nullable=False),  # shadow | canary
    Column("share", Float, nullable=False, default=0.0),
    Column("agents", JSONText, nullable=False),
    Column("triggers", JSONText, nullable=False),  # {field: [values]} on the run's trigger
    Column("max_denial_increase", Float, nullable=True),
    Column("max_escalation_increase", Float, nullable=True),
    Column("min_decisions", Integer, nullable=False, default=20),
    Column("state", String(20), nullable=False),  # running | promoted | aborted
    Column("live", SmallInteger, nullable=True),
    # Compared decisions so far, and how many each version denied or escalated (exact counters
    # every replica updates in the transaction that records a comparison).
    Column("decisions", BigInteger, nullable=False, default=0),
    Column("active_denials", BigInteger, nullable=False, default=0),
    Column("candidate_denials", BigInteger, nullable=False, default=0),
    Column("active_escalations", BigInteger, nullable=False, default=0),
    Column("candidate_escalations", BigInteger, nullable=False, default=0),
    Column("started_by", String(200), nullable=False),
    _ts("started_at"),
    Column("ended_by", String(200), nullable=True),
    _ts("ended_at", nullable=True),
    Column("end_reason", Text, nullable=True),
    UniqueConstraint("workflow", "live", name="uq_rollouts_workflow_live"),
)

# One live action judged by both versions of a rollout: the enforced decision (``arm`` says which
# version that was) and the other version's, recorded and never enforced.
rollout_decisions = Table(
    "rollout_decisions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("rollout_id", String(64), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("step_id", String(64), nullable=True),
    Column("agent_id", String(200), nullable=False),
    Column("tool", String(200), nullable=False),
    Column("arm", String(20), nullable=False),  # active | candidate: the version that was enforced
    Column("active_decision", String(20), nullable=False),
    Column("candidate_decision", String(20), nullable=False),
    Column("active_reasons", JSONText, nullable=False),
    Column("candidate_reasons", JSONText, nullable=False),
    _ts("created_at"),
    Index("ix_rollout_decisions_rollout", "rollout_id", "created_at"),
)
