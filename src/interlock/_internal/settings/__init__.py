"""One settings tree: environment (``INTERLOCK_*``, nested with ``__``), then ``interlock.toml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_TOKEN_SIGNING_SEED = "interlock-dev-signing-seed-change-me"
DEFAULT_ADMIN_TOKEN = ""
DEFAULT_PACKAGE_SIGNING_SEED = "interlock-dev-package-seed-change-me"


class DatabaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(default="sqlite:///interlock.db", description="SQLAlchemy URL; postgresql+psycopg://…")
    # NORMAL keeps WAL commits durable across a process crash; FULL also across power loss.
    sqlite_synchronous: str = Field(default="NORMAL", pattern="^(OFF|NORMAL|FULL|EXTRA)$")
    pool_size: int = Field(default=10, ge=1, le=200)
    # PostgreSQL write transactions in psycopg's pipeline mode: statements whose answers are not
    # read go out together (an action's record takes 3 round trips, not 8). It costs the client
    # CPU, so "auto" pipelines only when the database is across a network, not on this host.
    pipeline_writes: Literal["auto", "on", "off"] = "auto"
    echo: bool = False


class IdentitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token_ttl_s: int = Field(default=900, ge=30, le=86_400)
    # Seed for the Ed25519 key that signs access tokens; every replica must share it.
    signing_seed: str = DEFAULT_TOKEN_SIGNING_SEED
    issuer: str = "interlock"


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Seed for the Ed25519 key that signs audit checkpoints and evidence bundles.
    signing_seed: str = "interlock-dev-audit-seed-change-me"
    # Public keys (64 hex digits or PEM) of audit keys used before a rotation: checkpoints they
    # signed still verify. A checkpoint signed by a key that is neither current nor listed fails.
    retired_public_keys: list[str] = Field(default_factory=list)
    # Witnesses outside the database. Each new checkpoint is written as a signed file into this
    # directory (never overwritten; a different checkpoint at a seq already held is refused) ...
    witness_dir: Path | None = None
    # ... and/or POSTed as JSON, with the consistency proof from the previous one, to this URL.
    witness_url: str | None = None
    witness_timeout_s: float = Field(default=10.0, gt=0, le=120)


class StorageSettings(BaseModel):
    """Encryption at rest of stored payloads (arguments, results, triggers, approval payloads)."""

    model_config = ConfigDict(extra="forbid")

    # key id -> 32-byte AES-256 key as 64 hex digits or URL-safe base64. Keep retired keys here
    # until no payload written with them remains (see docs/security.md, "Rotating the data key").
    encryption_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # The key id new payloads are encrypted with; unset means payloads are stored in clear.
    encryption_key_id: str | None = None


class EgressSettings(BaseModel):
    """Where HTTP tools and MCP servers reached by ``url`` may connect. Deny by default; private,
    loopback and link-local addresses (cloud metadata included) stay blocked unless a CIDR here
    allows them."""

    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)
    allow_cidrs: list[str] = Field(default_factory=list)


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(default=5, ge=1, le=1000)
    cooldown_s: float = Field(default=30.0, gt=0, le=3600)


class RecoverySettings(BaseModel):
    """Leases on in-flight calls and the housekeeping that turns a dead replica's calls into
    "outcome unknown" for a person to resolve."""

    # A call's lease is its tool's timeout plus this margin; past it, the call's process is
    # presumed dead (a live one has given up on the upstream by then).
    lease_margin_s: float = Field(default=30.0, ge=0, le=86_400)
    # How often each replica runs housekeeping (expired leases, approval expiry, checkpoints).
    housekeeping_every_s: float = Field(default=30.0, gt=0, le=3600)


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service_name: str = "interlock"
    # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces; unset means no export.
    otlp_endpoint: str | None = None
    # Put (redacted) arguments and results on spans. Off by default: traces often leave the company.
    capture_payloads: bool = False


class WebhookSettings(BaseModel):
    """Where approval events are posted, signed with HMAC-SHA256 of ``secret``."""

    model_config = ConfigDict(extra="forbid")

    url: str
    secret: SecretStr


class PackageSettings(BaseModel):
    # Seed for the Ed25519 key that signs work packages; runners verify with its public key.
    signing_seed: str = DEFAULT_PACKAGE_SIGNING_SEED
    max_ttl_s: int = Field(default=7 * 86_400, ge=60, le=90 * 86_400)


class OidcGrant(BaseModel):
    """What members of one identity-provider group may do in Interlock."""

    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(default_factory=list)
    # None = every workflow.
    workflows: list[str] | None = None


class OidcSettings(BaseModel):
    """OpenID Connect sign-in for the console and the operator API (authorization code + PKCE)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scopes: str = "openid profile email groups"
    groups_claim: str = "groups"
    # The claim that names the person; their operator id is ``sso:<value>``.
    username_claim: str = "preferred_username"
    # group name → roles and workflows; a person gets the union over their groups.
    groups: dict[str, OidcGrant] = Field(default_factory=dict)
    # Where the provider sends people back; default: <server.public_url>/ui/sso/callback.
    redirect_url: str | None = None
    # Label on the console's sign-in button.
    display_name: str = "single sign-on"

    @property
    def enabled(self) -> bool:
        return bool(self.issuer and self.client_id)


class NotificationTargetSettings(BaseModel):
    """One place people are told about events they must act on.

    ``webhook``: signed JSON (``Interlock-Signature``, as approval webhooks); ``slack``: a Slack
    incoming-webhook message with a link to the console; ``ticket``: an ITSM issue created with a
    configurable REST call (``body`` is a JSON template whose strings may use ``{title}``,
    ``{text}``, ``{link}``, ``{event}``, ``{workflow}``, ``{run_id}``, ``{severity}``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["webhook", "slack", "ticket"]
    url: str
    secret: SecretStr | None = None
    # Event kinds to send; empty = every event a person must act on.
    events: list[str] = Field(default_factory=list)
    method: str = Field(default="POST", pattern="^(POST|PUT|PATCH)$")
    headers: dict[str, str] = Field(default_factory=dict)
    # Sent as "Authorization: <auth_scheme> <token>" (tickets: e.g. a Jira API token).
    token: SecretStr | None = None
    auth_scheme: str = "Bearer"
    body: dict[str, Any] | None = None


class NotificationSettings(BaseModel):
    targets: list[NotificationTargetSettings] = Field(default_factory=list)
    # "Budget nearly spent" is announced once per budget and period when spend crosses this share.
    budget_warn_ratio: float = Field(default=0.8, gt=0, lt=1)
    max_attempts: int = Field(default=5, ge=1, le=50)
    backoff_s: float = Field(default=1.0, gt=0, le=3600)


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None
    # Processes serving the one port (`interlock serve --workers`): each is bound by one core's
    # worth of Python, so up to one per core the machine gives the server.
    workers: int = Field(default=1, ge=1, le=64)
    # Worker threads of one process that run the action pipeline's own Python at once. More
    # threads only take turns at the interpreter lock; an action waiting on its upstream tool or
    # on another run's resource lock gives its turn away, so a slow tool does not count here.
    pipeline_threads: int = Field(default=4, ge=1, le=40)
    # Largest request body /v1 and /oauth accept; larger ones get 413 before anything is parsed.
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1_073_741_824)
    # Console sessions end after this long without a request, and at most after session_ttl_s.
    session_idle_s: int = Field(default=1800, ge=60, le=86_400)
    session_ttl_s: int = Field(default=8 * 3600, ge=300, le=7 * 86_400)
    # The console's approvals and handoffs lists ask this often whether they changed (a small
    # JSON request), and reload only the list when they did.
    console_refresh_s: float = Field(default=10.0, ge=0.5, le=3600)
    # /oauth/token: after this many failed attempts for one client id, answer 429 for
    # token_backoff_s, doubling with each further failure (up to token_backoff_max_s).
    token_failures_allowed: int = Field(default=5, ge=1, le=1000)
    token_backoff_s: float = Field(default=1.0, gt=0, le=3600)
    token_backoff_max_s: float = Field(default=300.0, gt=0, le=86_400)


class McpSettings(BaseModel):
    """The MCP gateway at ``/mcp``."""

    # Browsers send Origin; /mcp answers 403 to any origin not listed here (scheme://host[:port],
    # or scheme://host:* for any port). Loopback origins and server.public_url's are always allowed;
    # "*" turns the check off (only behind a proxy that checks Origin itself).
    allowed_origins: list[str] = Field(default_factory=list)
    # Host header values /mcp answers to (host[:port] or host:*), against DNS rebinding. Loopback
    # names and server.public_url's host are always allowed; "*" turns the check off.
    allowed_hosts: list[str] = Field(default_factory=list)
    # tools/list page size; a catalogue longer than this is paginated with an opaque cursor.
    page_size: int = Field(default=100, ge=1, le=10_000)
    # SSE `retry` (milliseconds) sent in each stream's priming event: how long a client whose stream
    # dropped waits before it reconnects with Last-Event-ID.
    sse_retry_ms: int = Field(default=1000, ge=0, le=600_000)
    # Events kept per MCP session for resumption (in this replica's memory); 0 turns it off.
    resume_events: int = Field(default=256, ge=0, le=100_000)


class Settings(BaseSettings):
    """Everything Interlock can be configured with. Build it when needed: ``Settings()``."""

    model_config = SettingsConfigDict(
        env_prefix="INTERLOCK_",
        env_nested_delimiter="__",
        toml_file="interlock.toml",
        extra="forbid",
    )

    database: DatabaseSettings = DatabaseSettings()
    identity: IdentitySettings = IdentitySettings()
    audit: AuditSettings = AuditSettings()
    storage: StorageSettings = StorageSettings()
    server: ServerSettings = ServerSettings()
    mcp: McpSettings = McpSettings()
    egress: EgressSettings = EgressSettings()
    breaker: BreakerSettings = BreakerSettings()
    recovery: RecoverySettings = RecoverySettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    packages: PackageSettings = PackageSettings()
    oidc: OidcSettings = OidcSettings()
    notifications: NotificationSettings = NotificationSettings()
    manifests: list[Path] = Field(default_factory=list)
    # USD per million tokens, {"model": {"input": x, "output": y}}; a manifest may override.
    model_prices: dict[str, dict[str, float]] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def default_secrets_in_use(self) -> list[str]:
        """Names of secrets still at their shipped defaults (unsafe beyond loopback)."""
        found = []
        if self.identity.signing_seed == DEFAULT_TOKEN_SIGNING_SEED:
            found.append("identity.signing_seed")
        if self.audit.signing_seed == AuditSettings().signing_seed:
            found.append("audit.signing_seed")
        if self.packages.signing_seed == DEFAULT_PACKAGE_SIGNING_SEED:
            found.append("packages.signing_seed")
        return found

    def with_database(self, url: str) -> Settings:
        data: dict[str, Any] = self.model_dump()
        data["database"]["url"] = url
        return Settings.model_validate(data)


__all__ = [
    "AuditSettings",
    "BreakerSettings",
    "DatabaseSettings",
    "EgressSettings",
    "IdentitySettings",
    "McpSettings",
    "NotificationSettings",
    "NotificationTargetSettings",
    "OidcGrant",
    "OidcSettings",
    "PackageSettings",
    "RecoverySettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "TelemetrySettings",
    "WebhookSettings",
]
