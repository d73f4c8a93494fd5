"""The workflow manifest: one page of YAML that is a workflow's whole operating model.

Every model forbids unknown keys, so a typo is an error that names its line, never a silently
ignored setting.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

Verb = Literal[
    "read",
    "draft",
    "create",
    "update",
    "send",
    "publish",
    "approve",
    "refund",
    "invite",
    "delete",
    "execute",
]
Trait = Literal["write", "bulk", "pii", "money", "irreversible", "external"]
VERBS: tuple[str, ...] = get_args(Verb)
TRAITS: tuple[str, ...] = get_args(Trait)
# The verb a verifier agent holds: it judges other agents' flagged actions (see Verification).
# It is a role's verb only, never a tool's.
VERIFY = "verify"
RoleVerb = Literal[Verb, "verify"]

_NAME = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuccessMetric(Strict):
    name: str
    target: float | None = None
    unit: str | None = None
    description: str | None = None


class AgentSpec(Strict):
    id: Name
    environment: Name
    roles: list[Name] = Field(min_length=1)
    description: str | None = None


class RoleGrant(Strict):
    """What a role may attempt at all; rules then decide allow / approval / forbid."""

    verbs: list[RoleVerb] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list)
    description: str | None = None


class RateLimit(Strict):
    per_minute: int | None = Field(default=None, ge=1, le=1_000_000)
    per_hour: int | None = Field(default=None, ge=1, le=100_000_000)
    burst: int | None = Field(default=None, ge=1, le=1_000_000)  # per second
    per_agent_per_minute: int | None = Field(default=None, ge=1, le=1_000_000)


class PythonUpstream(Strict):
    kind: Literal["python"] = "python"
    callable: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    # Run on a worker thread so `timeout_s` can cut a blocking function off. Off by default: a
    # thread hand-off costs more than most in-process tools take, and the thread cannot be killed.
    isolate: bool = False


class HttpUpstream(Strict):
    kind: Literal["http"] = "http"
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Literal["json", "query", "none"] = "json"


class McpUpstream(Strict):
    kind: Literal["mcp"] = "mcp"
    # Omitted when the tool's system binds an MCP server per environment.
    server: Name | None = None
    tool: str


Upstream = Annotated[PythonUpstream | HttpUpstream | McpUpstream, Field(discriminator="kind")]


class CredentialRef(Strict):
    """Where the upstream secret lives. The agent never sees it; it is injected at execution."""

    env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]*$")
    file: str | None = None
    header: str = "Authorization"
    scheme: str | None = "Bearer"

    @model_validator(mode="after")
    def _one_source(self) -> CredentialRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("set exactly one of 'env' or 'file'")
        return self


class ResourceLock(Strict):
    """Two runs may not change the same record at once: the lock key is built from arguments."""

    key: str = Field(min_length=1, max_length=200)  # an argument path, e.g. ticket_id
    wait_s: float = Field(default=5.0, ge=0, le=300)
    hold_s: float = Field(default=300.0, gt=0, le=86_400)


class RiskCondition(Strict):
    """Traits an action gains from its arguments, e.g. ``{when: "limit > 50", traits: [bulk]}``."""

    when: str
    traits: list[Trait] = Field(min_length=1)


DestinationKind = Literal["internal", "external", "public"]


class Destination(Strict):
    """Where a tool sends data, and which data classes that place is cleared to receive.

    ``internal`` is one of the company's own systems, ``external`` a recipient outside it (a
    customer's mailbox, a partner's API), ``public`` anyone (a web page, a public channel).
    ``recipient`` is the argument holding the address data goes to; a recipient in the data
    subject's own domain is cleared for that subject's data when a flow rule says so.
    """

    kind: DestinationKind
    cleared: list[Name] = Field(default_factory=list)
    recipient: str | None = Field(default=None, min_length=1, max_length=200)


class CacheInvalidation(Strict):
    """A write that makes cached answers of this tool stale. ``arguments`` maps each argument of
    the cache key to the write's argument holding the same record (``{ticket_id: ticket_id}``);
    without it the write makes every cached answer of the tool stale."""

    tool: Name
    arguments: dict[str, str] | None = None


class ToolCache(Strict):
    """Serve an idempotent read from a stored answer for ``ttl_s`` seconds. ``scope: run`` keeps
    answers to one run, ``workflow`` shares them across the workflow's runs (per environment);
    ``key`` lists the arguments that form the key (default: all of them)."""

    ttl_s: float = Field(gt=0, le=30 * 86_400)
    scope: Literal["run", "workflow"] = "run"
    key: list[str] | None = None
    invalidated_by: list[CacheInvalidation] = Field(default_factory=list)


class ToolSpec(Strict):
    name: Name
    description: str = ""
    verb: Verb
    traits: list[Trait] = Field(default_factory=list)
    # The system this tool acts on (see Manifest.systems); its binding for the run's
    # environment supplies the endpoint and the credential.
    system: Name | None = None
    # Data classes this tool's result carries into the run (pii, financial, ...).
    returns: list[Name] = Field(default_factory=list)
    # A result path naming whose data it is (an email address or a domain): a recipient in that
    # domain is the data's own subject.
    data_subject: str | None = Field(default=None, min_length=1, max_length=200)
    destination: Destination | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    output_schema: dict[str, Any] | None = None
    upstream: Upstream | None = None
    credential: CredentialRef | None = None
    rate_limit: RateLimit | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=600)
    idempotent: bool = False
    cost_usd: float = Field(default=0.0, ge=0, le=1_000_000)
    risk_conditions: list[RiskCondition] = Field(default_factory=list)
    lock: ResourceLock | None = None
    impact_if_accepted: str | None = None
    impact_if_rejected: str | None = None
    # The agent gets the result redacted (secrets and PII patterns masked), as the database and
    # traces keep it. Off by default: most workflows need the tool's real answer (an e-mail address
    # to reply to, an id to act on).
    redact_results: bool = False
    # Idempotent reads only: answers served from storage for a while (see ToolCache).
    cache: ToolCache | None = None
    # The arguments that name the record an action is about (a ticket, a customer): the console's
    # "history of this record" finds other actions with the same value. None: every top-level
    # argument named ``*_id``; [] turns the history off for this tool.
    record_keys: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=20
    )

    @model_validator(mode="after")
    def _record_keys_are_arguments(self) -> ToolSpec:
        properties = self.input_schema.get("properties")
        if self.record_keys and isinstance(properties, dict):
            unknown = [k for k in self.record_keys if k not in properties]
            if unknown:
                raise ValueError(
                    f"record_keys names {', '.join(map(repr, unknown))}, not in input_schema.properties "
                    f"({', '.join(sorted(properties)) or 'none'})"
                )
        return self

    def key_arguments(self, arguments: Any) -> dict[str, Any]:
        """The arguments that name the record this call is about, with their (scalar) values."""
        if not isinstance(arguments, dict):
            return {}
        names = (
            self.record_keys if self.record_keys is not None else [k for k in arguments if k.endswith("_id")]
        )
        return {
            k: arguments[k]
            for k in names
            if isinstance(arguments.get(k), str | int)
            and not isinstance(arguments.get(k), bool)
            and arguments.get(k) != ""
        }


class RuleSpec(Strict):
    """One rule. Every key present must match; ``when`` is an argument condition such as
    ``amount > 50`` or ``fields.priority == "urgent" and amount <= 500``."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")] | None = None
    tool: str | list[str] | None = None
    verb: Verb | list[Verb] | None = None
    trait: Trait | list[Trait] | None = None
    roles: list[Name] | None = None
    environments: list[Name] | None = None
    when: str | None = None
    description: str | None = None
    expires_after_s: int | None = Field(default=None, ge=10, le=30 * 86_400)
    quorum: int | None = Field(default=None, ge=1, le=10)

    @model_validator(mode="after")
    def _matches_something(self) -> RuleSpec:
        if self.tool is None and self.verb is None and self.trait is None:
            raise ValueError("a rule needs at least one of 'tool', 'verb' or 'trait'")
        return self

    def tool_list(self) -> list[str]:
        return [] if self.tool is None else [self.tool] if isinstance(self.tool, str) else list(self.tool)

    def verb_list(self) -> list[str]:
        return [] if self.verb is None else [self.verb] if isinstance(self.verb, str) else list(self.verb)

    def trait_list(self) -> list[str]:
        return [] if self.trait is None else [self.trait] if isinstance(self.trait, str) else list(self.trait)


class Rules(Strict):
    allow: list[RuleSpec] = Field(default_factory=list)
    require_approval: list[RuleSpec] = Field(default_factory=list)
    forbid: list[RuleSpec] = Field(default_factory=list)


StopKind = Literal[
    "missing_data",
    "conflicting_records",
    "sensitive_category",
    "low_confidence",
    "outside_category",
    "sequence_failure",
]


class StopRule(Strict):
    """A condition that ends in ``escalate``: the run pauses and a human takes over."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")]
    kind: StopKind
    description: str | None = None
    tool: str | list[str] | None = None
    required: list[str] = Field(default_factory=list)  # missing_data: argument paths
    traits: list[Trait] = Field(default_factory=list)  # sensitive_category
    pattern: str | None = None  # sensitive_category: regex over argument text
    categories: list[Literal["money", "access", "legal", "compliance", "security"]] = Field(
        default_factory=list
    )
    threshold: float | None = Field(default=None, ge=0, le=1)  # low_confidence
    field: str | None = None  # outside_category: the classification argument
    allowed: list[str] = Field(default_factory=list)  # outside_category
    sources: list[str] = Field(default_factory=list)  # conflicting_records: tools whose outputs agree
    key: str | None = None  # conflicting_records: the output key compared
    sequence: list[str] = Field(default_factory=list)  # sequence_failure: tools in order

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    def tool_list(self) -> list[str]:
        return [] if self.tool is None else [self.tool] if isinstance(self.tool, str) else list(self.tool)


class Limits(Strict):
    """Caps for one scope (a run, an agent's day, a workflow's day). Unset means no cap."""

    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    max_tool_calls: int | None = Field(default=None, ge=1, le=100_000_000)
    max_cost_usd: float | None = Field(default=None, ge=0, le=1_000_000_000)
    max_tokens: int | None = Field(default=None, ge=1, le=10**13)


class RunBudget(Limits):
    max_duration_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    # The same tool with the same arguments more than this many times in one run is a loop.
    max_repeats: int | None = Field(default=None, ge=1, le=10_000)


class ValueLimit(Strict):
    """A cap on the sum of an argument (the money an action moves, say) over a calendar window
    (UTC) in a scope: ``payments.refund`` ``amount`` at most 500 per ``customer_id`` per day."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")]
    tool: str | list[str]
    argument: str = Field(min_length=1, max_length=200)  # a numeric argument path
    max: float = Field(ge=0, le=10**12)
    unit: str | None = Field(default=None, max_length=20)  # shown in reasons: USD, EUR, items
    window: Literal["hour", "day", "week", "month"] = "day"
    scope: Literal["workflow", "agent", "run"] = "workflow"
    per: list[str] = Field(default_factory=list)  # argument paths that split the scope
    when: str | None = None  # only actions whose arguments match count (currency == "USD")
    description: str | None = None

    def tool_list(self) -> list[str]:
        return [self.tool] if isinstance(self.tool, str) else list(self.tool)


class ModelPrice(Strict):
    """USD per million tokens."""

    input: float = Field(ge=0, le=10_000)
    output: float = Field(ge=0, le=10_000)


class Budgets(Strict):
    per_run: RunBudget = RunBudget()
    per_agent_day: Limits = Limits()
    per_workflow_day: Limits = Limits()
    max_concurrent_runs: int | None = Field(default=None, ge=1, le=1_000_000)
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    # Caps on the sum of an argument over a window (money moved per customer per day).
    value_limits: list[ValueLimit] = Field(default_factory=list)


# ---- verification: verifier agents settle or check flagged actions (propose, then verify) --------

VerdictKind = Literal["approve", "reject"]


class VerifierSpec(Strict):
    """A verifier agent and the approval requests routed to it.

    ``rules`` names the ``require_approval`` rules whose requests go to this verifier before a
    person sees them; omitted, every request of the workflow does (the first verifier that
    matches gets it)."""

    agent: Name
    rules: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")]] | None = None
    description: str | None = None


class SettleRule(Strict):
    """What a verifier may settle alone (``settle``) or never (``never_settle``); compiled to Cedar
    policies on the verb ``verify`` (``settle:<id>`` permits, ``never-settle:<id>`` forbids)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")]
    tool: str | list[str] | None = None
    verb: Verb | list[Verb] | None = None
    trait: Trait | list[Trait] | None = None
    when: str | None = None
    # Only these verdicts (default: both approve and reject).
    verdict: VerdictKind | list[VerdictKind] | None = None
    # Only these verifier agents (default: any verifier).
    verifiers: list[Name] | None = None
    description: str | None = None

    def tool_list(self) -> list[str]:
        return [] if self.tool is None else [self.tool] if isinstance(self.tool, str) else list(self.tool)

    def verb_list(self) -> list[str]:
        return [] if self.verb is None else [self.verb] if isinstance(self.verb, str) else list(self.verb)

    def trait_list(self) -> list[str]:
        return [] if self.trait is None else [self.trait] if isinstance(self.trait, str) else list(self.trait)

    def verdict_list(self) -> list[str]:
        if self.verdict is None:
            return []
        return [self.verdict] if isinstance(self.verdict, str) else list(self.verdict)


class Verification(Strict):
    """Verifier gates: a flagged action goes to a verifier agent before (or instead of) a person.

    A verifier's verdict settles the approval only where policy lets it (a ``settle`` rule
    permits and no forbid fires on the verb ``verify``); anywhere else the verdict is recorded
    as advice and the approval waits for a person."""

    verifiers: list[VerifierSpec] = Field(default_factory=list)
    settle: list[SettleRule] = Field(default_factory=list)
    never_settle: list[SettleRule] = Field(default_factory=list)

    def verifier_for(self, policy_ids: list[str]) -> VerifierSpec | None:
        """The verifier a request that matched these ``review:<rule>`` policies goes to."""
        rules = {p.split(":", 1)[1] for p in policy_ids if p.startswith("review:")}
        for verifier in self.verifiers:
            if verifier.rules is None or rules & set(verifier.rules):
                return verifier
        return None

    def verifier(self, agent_id: str) -> VerifierSpec | None:
        for verifier in self.verifiers:
            if verifier.agent == agent_id:
                return verifier
        return None


# ---- model routing: tiers of models for classes of model tasks -----------------------------------


class ModelTier(Strict):
    """One tier: the models allowed in it and their prices (USD per million tokens). The first
    model listed is the tier's reference price (what the weekly review compares against)."""

    name: Name
    models: dict[Annotated[str, Field(min_length=1, max_length=200)], ModelPrice] = Field(min_length=1)
    description: str | None = None


class ModelRouting(Strict):
    """Which models each task class may use. ``tiers`` go from cheapest to strongest; ``tasks``
    maps a task class (extraction, classification, planning, ...) to its tier. A reported model
    call outside its class's tier is flagged (``on_unlisted: flag``) or refused, which stops the
    run (``refuse``)."""

    tiers: list[ModelTier] = Field(min_length=1)
    tasks: dict[Name, Name] = Field(default_factory=dict)
    on_unlisted: Literal["flag", "refuse"] = "flag"

    def tier(self, name: str) -> ModelTier | None:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return None

    def next_tier(self, name: str) -> ModelTier | None:
        names = [t.name for t in self.tiers]
        index = names.index(name) if name in names else -1
        return self.tiers[index + 1] if 0 <= index < len(self.tiers) - 1 else None


class Evaluation(Strict):
    golden_set: str
    threshold: float = Field(default=1.0, ge=0, le=1)


ApproverRole = Literal["admin", "owner", "approver"]
_DEFAULT_APPROVERS: tuple[ApproverRole, ...] = ("approver", "owner", "admin")


class Approvals(Strict):
    expires_after_s: int = Field(default=3600, ge=10, le=30 * 86_400)
    approver_roles: list[ApproverRole] = Field(default_factory=lambda: list(_DEFAULT_APPROVERS))
    quorum: int = Field(default=1, ge=1, le=10)
    allow_self_approval: bool = False
    # Roles whose holders may see a waiting approval's values unmasked (an e-mail recipient as
    # typed, not a***@example.com); each time is an audit event. Credentials stay masked.
    unmasked_roles: list[ApproverRole] = Field(default_factory=list)


class Confidence(Strict):
    """Confidence-aware routing: alone at or above ``auto``, review between, reject below ``review``."""

    auto: float = Field(default=0.0, ge=0, le=1)
    review: float = Field(default=0.0, ge=0, le=1)


_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=_ENV_NAME)]
# A word of an environment variable's name that says its value is a secret: GITHUB_TOKEN, apiKey,
# DB_PASSWORD, AWS_SECRET_ACCESS_KEY, GITHUB_PAT. Erring towards "secret" costs a one-line fix.
_SECRET_WORD = re.compile(
    r"\w*(token|secret|password|passwd|passphrase|credential|key)s?|pass|pwd|creds|auth|authorization"
    r"|cookies?|pat|dsn"
)
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
# Values that are secrets whatever their key is called: private keys, JWTs, well-known token shapes.
_SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."
    r"|\b(ghp|gho|ghs|ghu|ghr|github_pat|glpat|sk|xox[abpr])[-_][A-Za-z0-9_-]{16,}|\b(AKIA|ASIA)[0-9A-Z]{16}\b"
)


class McpEnvFrom(Strict):
    """A value of an MCP server's environment that the manifest names but never holds.

    It is read when the server's process starts, from Interlock's own environment (``from_env``)
    or from a file (``from_file``, relative to the manifest's folder), so no manifest version,
    database row or evidence bundle ever contains it.
    """

    from_env: str | None = Field(default=None, pattern=_ENV_NAME)
    from_file: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> McpEnvFrom:
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError("set exactly one of 'from_env' or 'from_file'")
        return self


def _env_error(key: Any, message: str) -> ValidationError:
    """An error located at ``env.<key>``; its input is the key, so the value is never echoed."""
    details = InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": message}), loc=(key,), input=key
    )
    return ValidationError.from_exception_data("env", [details])


def _located(key: Any, exc: ValidationError) -> ValidationError:
    """``exc``'s errors, moved under ``env.<key>``."""
    details = [
        InitErrorDetails(type=e["type"], loc=(key, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in exc.errors(include_url=False)
    ]
    return ValidationError.from_exception_data("env", details)


class McpServerSpec(Strict):
    """An upstream MCP server: a local process (``command``, stdio) or a remote one (``url``).

    ``env`` sets a stdio server's environment: plain strings for settings, ``{from_env: VAR}`` or
    ``{from_file: path}`` for secrets. A literal value whose name or shape says "secret" is refused,
    since the manifest text is stored with every version and exported with evidence.
    """

    name: Name
    command: list[str] | None = None
    url: str | None = None
    env: dict[EnvName, str | McpEnvFrom] = Field(default_factory=dict)

    @field_validator("env", mode="before")
    @classmethod
    def _references_and_no_literal_secrets(cls, env: Any) -> Any:
        # Checked here, value by value, rather than left to the ``str | McpEnvFrom`` union, so
        # each error is located at its variable (and line) and says what was meant.
        if not isinstance(env, dict):
            return env
        out: dict[Any, Any] = {}
        for key, value in env.items():
            if isinstance(value, McpEnvFrom):
                out[key] = value
                continue
            if isinstance(value, dict):
                try:
                    out[key] = McpEnvFrom.model_validate(value)
                except ValidationError as exc:
                    raise _located(key, exc) from None
                continue
            if not isinstance(value, str):
                hint = "; put it in quotes if it is text" if isinstance(value, bool | int | float) else ""
                raise _env_error(key, f"expected a string, {{from_env: VAR}} or {{from_file: path}}{hint}")
            words = [word.lower() for word in _NAME_WORDS.findall(str(key))]
            if any(_SECRET_WORD.fullmatch(word) for word in words):
                why = "its name says it is a secret"
            elif _SECRET_VALUE.search(value):
                why = "the value looks like a secret (a token or a private key)"
            else:
                out[key] = value
                continue
            # The value itself is never quoted: the error may be printed, logged or stored.
            raise _env_error(
                key,
                f"{why}, and a literal value would be stored with every manifest version; write "
                f"{{from_env: {key}}} to read it from Interlock's environment, or {{from_file: path}} "
                "to read it from a file, when the server starts",
            )
        return out

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("set exactly one of 'command' (stdio) or 'url' (streamable HTTP)")
        if self.url is not None and self.env:
            raise ValueError(
                "'env' sets a stdio server's environment; a 'url' server gets its secret through "
                "each tool's credential"
            )
        return self


class Binding(Strict):
    """One environment's way to reach a system: its endpoint and its credential reference.

    ``url`` is the base URL HTTP tools' paths are joined to; ``mcp_server`` names the MCP server
    (under mcp_servers) MCP tools call. A run uses only its own environment's binding.
    """

    url: str | None = Field(default=None, pattern=r"^https?://[^/?#{}\s]+(/[^?#{}\s]*)?$")
    mcp_server: Name | None = None
    credential: CredentialRef | None = None


Tier = Annotated[int, Field(ge=1, le=4)]


class SystemSpec(Strict):
    """A system tools act on: who owns it, how critical it is, what data it holds, and per
    environment where it is and with which credential."""

    name: Name
    owner: str = Field(min_length=1)
    description: str | None = None
    tier: Tier = 3  # 1 = most critical
    data_classes: list[Name] = Field(default_factory=list)
    bindings: dict[Name, Binding] = Field(default_factory=dict)


DEFAULT_DATA_CLASSES = ("public", "internal", "pii", "financial", "secret")


class FlowRule(Strict):
    """What happens when a run carrying ``classes`` would send them to a destination of a kind in
    ``to`` that is not cleared for them. Without a matching rule such a flow is denied."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,120}$")]
    classes: list[Name] = Field(min_length=1)
    to: list[DestinationKind] = Field(min_length=1)
    outcome: Literal["allow", "require_approval", "deny"]
    # A recipient in the domain of the data's own subject (see ToolSpec.data_subject) is cleared.
    except_subject_domain: bool = False
    description: str | None = None


class Baseline(Strict):
    """The team's figures before agents, for the executive view's comparison."""

    cycle_time_s: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    cost_per_task_usd: float | None = Field(default=None, ge=0)
    description: str | None = None


class CircuitBreakerSpec(Strict):
    """What an open circuit breaker on one of this workflow's HTTP upstreams does. Calls to it
    fail fast either way; ``pause_workflow`` also pauses the workflow (audit ``workflow.paused``,
    by ``interlock``) until a person resumes it."""

    on_open: Literal["fail_fast", "pause_workflow"] = "fail_fast"


class Manifest(Strict):
    name: Name
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,50}$")]
    owner: str = Field(min_length=1)
    objective: str = Field(min_length=1)
    success_metric: SuccessMetric
    out_of_scope: list[str] = Field(default_factory=list)
    environments: list[Name] = Field(min_length=1)
    agents: list[AgentSpec] = Field(default_factory=list)
    roles: dict[Name, RoleGrant] = Field(default_factory=dict)
    tools: list[ToolSpec] = Field(min_length=1)
    # Shared systems files (relative to the manifest) whose systems this workflow uses.
    imports: list[str] = Field(default_factory=list)
    systems: list[SystemSpec] = Field(default_factory=list)
    # The data classes tools and systems may name; empty means DEFAULT_DATA_CLASSES.
    data_classes: list[Name] = Field(default_factory=list)
    flow_rules: list[FlowRule] = Field(default_factory=list)
    baseline: Baseline | None = None
    mcp_servers: list[McpServerSpec] = Field(default_factory=list)
    rules: Rules = Rules()
    policies: list[str] = Field(default_factory=list)  # extra .cedar files, relative to the manifest
    stop_rules: list[StopRule] = Field(default_factory=list)
    budgets: Budgets = Budgets()
    approvals: Approvals = Approvals()
    confidence: Confidence = Confidence()
    evaluation: Evaluation | None = None
    # Operator ids (not emails) who may pause and resume this workflow whatever their roles.
    pause_owners: list[Name] = Field(default_factory=list)
    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    circuit_breaker: CircuitBreakerSpec = CircuitBreakerSpec()
    # Verifier gates (propose, then verify).
    verification: Verification | None = None
    # Model tiers for task classes.
    models: ModelRouting | None = None

    def tool(self, name: str) -> ToolSpec | None:
        for spec in self.tools:
            if spec.name == name:
                return spec
        return None

    def system(self, name: str) -> SystemSpec | None:
        for spec in self.systems:
            if spec.name == name:
                return spec
        return None

    def known_data_classes(self) -> tuple[str, ...]:
        return tuple(self.data_classes) if self.data_classes else DEFAULT_DATA_CLASSES

    def agent(self, agent_id: str) -> AgentSpec | None:
        for spec in self.agents:
            if spec.id == agent_id:
                return spec
        return None


__all__ = [
    "DEFAULT_DATA_CLASSES",
    "TRAITS",
    "VERBS",
    "VERIFY",
    "AgentSpec",
    "Baseline",
    "Binding",
    "CacheInvalidation",
    "CircuitBreakerSpec",
    "CredentialRef",
    "Destination",
    "FlowRule",
    "HttpUpstream",
    "Manifest",
    "McpUpstream",
    "ModelRouting",
    "ModelTier",
    "PythonUpstream",
    "RoleGrant",
    "RuleSpec",
    "SettleRule",
    "StopRule",
    "SystemSpec",
    "ToolCache",
    "ToolSpec",
    "ValueLimit",
    "Verification",
    "VerifierSpec",
]
