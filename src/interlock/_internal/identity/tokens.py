"""Agent access tokens: OAuth2 client-credentials exchange, EdDSA JWTs, and agent authentication.

Tokens are Ed25519-signed JWTs. The private key is derived from ``identity.signing_seed`` so
every replica that shares the seed mints and verifies the same tokens without sharing key files.
A token says who the agent is and where it may act; whether the agent may still act is read
from its row on every call (:func:`authenticate_agent`), which is what makes revocation
immediate even though tokens live up to ``identity.token_ttl_s``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from interlock._internal.identity.agents import TOUCH_INTERVAL_S, AgentAuthRow, AgentStore
from interlock._internal.identity.secrets import credential_fingerprint, hash_secret
from interlock._internal.settings import IdentitySettings
from interlock.exceptions import ArgumentsInvalid, AuthenticationError, StorageError, TokenScopeError

log = logging.getLogger(__name__)

AUDIENCE = "interlock:agent"
ALGORITHM = "EdDSA"
# RFC 9068's media type for JWT access tokens: keeps them from being mistaken for other JWTs.
TOKEN_TYPE = "at+jwt"
# Far above any token we mint (~500 bytes); refuses oversized input before any parsing.
MAX_TOKEN_CHARS = 4096
VERIFIED_CACHE_SIZE = 10_000
# Replicas' clocks differ a little; a token minted on one must be usable at once on another.
CLOCK_SKEW_S = 30

_HKDF_INFO = b"interlock/identity/access-token-signing/ed25519/v1"
_REQUIRED = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]
_INVALID = "invalid access token"


@dataclass(frozen=True, slots=True)
class AccessToken:
    """The result of a client-credentials exchange (``token_type`` as in OAuth2)."""

    token: str = field(repr=False)
    expires_at: float
    agent_id: str
    workflow: str
    environment: str
    token_type: str = "Bearer"

    def expires_in(self, now: float | None = None) -> int:
        """Whole seconds left, for the OAuth2 ``expires_in`` field."""
        return max(0, int(self.expires_at - (time.time() if now is None else now)))


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The verified content of an access token."""

    agent_id: str
    workflow: str
    environment: str
    issued_at: int
    not_before: int
    expires_at: int
    token_id: str
    # Fingerprint of the client secret the token was minted with; see authenticate_agent.
    credential: str
    # RFC 8707 resources the token is bound to (its audience besides AUDIENCE); empty: all of them.
    resources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentPrincipal:
    """An authenticated agent, as the pipeline sees it."""

    agent_id: str
    workflow: str
    environment: str


@dataclass(frozen=True, slots=True)
class _Keys:
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    key_id: str


class TokenService:
    """Mints and verifies agent access tokens. Build one per process and reuse it.

    Nothing is computed until the first token is minted or verified; the key is then derived
    once and the parsed key objects are reused for every call.
    """

    def __init__(self, settings: IdentitySettings, *, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._verified: dict[str, TokenClaims] = {}

    @cached_property
    def _keys(self) -> _Keys:
        # HKDF with a purpose label: the same seed string reused elsewhere (say, for audit
        # signing) still yields an unrelated key.
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
            self._settings.signing_seed.encode("utf-8")
        )
        private = Ed25519PrivateKey.from_private_bytes(seed)
        public = private.public_key()
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return _Keys(private=private, public=public, key_id=hashlib.sha256(raw).hexdigest()[:16])

    def now(self) -> float:
        """The service's clock, in seconds since the epoch."""
        return self._clock()

    @property
    def key_id(self) -> str:
        """A short identifier of the signing key, sent as the ``kid`` header."""
        return self._keys.key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._keys.public

    def exchange(
        self,
        client_id: str,
        client_secret: str,
        *,
        store: AgentStore,
        ttl_s: int | None = None,
        now: float | None = None,
        resources: Sequence[str] = (),
        issuer: str | None = None,
    ) -> AccessToken:
        """OAuth2 client credentials: a client id and secret in, a short-lived access token out.

        An unknown client and a wrong secret raise the same :class:`AuthenticationError`
        (code ``invalid_client``); a revoked agent gets code ``agent_revoked``. ``ttl_s`` may only
        shorten the configured lifetime. ``resources`` (RFC 8707, already checked by the caller)
        join the token's audience, and the token is then only good at those resources. ``issuer``
        (the authorization server's URL, as its RFC 8414 metadata names it) replaces the configured
        ``identity.issuer`` in ``iss``; :meth:`verify` accepts either (see :meth:`_accepts_issuer`).
        """
        row = store.check_secret(client_id, client_secret)
        agent = row.record
        lifetime = (
            self._settings.token_ttl_s if ttl_s is None else min(int(ttl_s), self._settings.token_ttl_s)
        )
        if lifetime < 1:
            raise ArgumentsInvalid("ttl_s must be at least one second", field="ttl_s")
        issued = int(self._clock() if now is None else now)
        expires = issued + lifetime
        claims = {
            "iss": issuer or self._settings.issuer,
            "aud": [AUDIENCE, *dict.fromkeys(resources)] if resources else AUDIENCE,
            "sub": agent.id,
            "wf": agent.workflow,
            "env": agent.environment,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
            "cfp": credential_fingerprint(hash_secret(client_secret)),
        }
        keys = self._keys
        token = jwt.encode(
            claims, keys.private, algorithm=ALGORITHM, headers={"typ": TOKEN_TYPE, "kid": keys.key_id}
        )
        return AccessToken(
            token=token,
            expires_at=float(expires),
            agent_id=agent.id,
            workflow=agent.workflow,
            environment=agent.environment,
        )

    def verify(self, token: str, *, now: float | None = None) -> TokenClaims:
        """Check signature, algorithm, type, issuer, audience and lifetime; return the claims.

        Raises :class:`AuthenticationError` with code ``token_expired`` for an expired token and
        ``token_invalid`` for anything else. Only ``EdDSA`` is accepted: ``none`` and the HMAC
        algorithms (with which a public key could be abused as a shared secret) are refused.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError(_INVALID, code="token_invalid")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signature(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                # Crude but bounded; a token re-verifies at most once after a flush.
                self._verified.clear()
            self._verified[token] = claims
        at = self._clock() if now is None else now
        if at >= claims.expires_at:
            raise AuthenticationError(
                "access token expired; exchange the client credentials for a new one",
                code="token_expired",
                details={"expired_at": claims.expires_at},
            )
        if claims.not_before > at + CLOCK_SKEW_S or claims.issued_at > at + CLOCK_SKEW_S:
            raise AuthenticationError(f"{_INVALID}: not valid yet", code="token_invalid")
        return claims

    def _verify_signature(self, token: str) -> TokenClaims:
        # A signature that verified once verifies forever, so its claims are cached per token;
        # lifetime is still checked on every call and revocation is checked by the caller.
        try:
            decoded = jwt.api_jwt.decode_complete(
                token,
                self._keys.public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                # Times are checked below against the injectable clock, not here against the wall clock.
                options={
                    "require": _REQUIRED,
                    "verify_signature": True,
                    "verify_aud": True,
                    "verify_iss": False,  # checked below: the configured name or this server's URL
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"{_INVALID}: {_reason(exc)}", code="token_invalid") from exc
        if decoded["header"].get("typ") != TOKEN_TYPE:
            raise AuthenticationError(f"{_INVALID}: not an access token", code="token_invalid")
        if not self._accepts_issuer(decoded["payload"]["iss"]):
            raise AuthenticationError(f"{_INVALID}: issued by someone else", code="token_invalid")
        return _claims(decoded["payload"])

    def _accepts_issuer(self, iss: object) -> bool:
        """``identity.issuer``, or an http(s) URL: the address this server names itself by in its
        RFC 8414 metadata, which the token endpoint writes (the signature, made with this
        deployment's own key, is what proves the token ours; ``iss`` names the issuer for clients)."""
        return isinstance(iss, str) and (
            iss == self._settings.issuer or iss.startswith(("http://", "https://"))
        )


def _claims(payload: dict[str, Any]) -> TokenClaims:
    # The signature proves we minted it, but a different seed-sharing deployment or a future
    # version could disagree on shape; check types rather than trusting them.
    strings = {}
    for name in ("sub", "wf", "env", "jti", "cfp"):
        value = payload.get(name)
        if not isinstance(value, str) or not value:
            raise AuthenticationError(
                f"{_INVALID}: claim {name!r} missing or not a string", code="token_invalid"
            )
        strings[name] = value
    numbers = {}
    for name in ("iat", "nbf", "exp"):
        value = payload.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise AuthenticationError(f"{_INVALID}: claim {name!r} is not an integer", code="token_invalid")
        numbers[name] = value
    audience = payload.get("aud")
    bound = audience if isinstance(audience, list) else []
    return TokenClaims(
        agent_id=strings["sub"],
        workflow=strings["wf"],
        environment=strings["env"],
        issued_at=numbers["iat"],
        not_before=numbers["nbf"],
        expires_at=numbers["exp"],
        token_id=strings["jti"],
        credential=strings["cfp"],
        resources=tuple(a for a in bound if isinstance(a, str) and a != AUDIENCE),
    )


def _reason(exc: jwt.PyJWTError) -> str:
    # PyJWT's messages are safe to show (they never echo key material) and help whoever debugs.
    return str(exc) or type(exc).__name__


def authenticate_agent(
    token: str,
    *,
    tokens: TokenService,
    store: AgentStore,
    workflow: str | None = None,
    environment: str | None = None,
    now: float | None = None,
    resources: Collection[str] | None = None,
) -> AgentPrincipal:
    """The agent a bearer token stands for, if it may act now.

    Verifies the token, then reads the agent's row with one primary-key SELECT: the agent must
    exist, be active, and still hold the secret the token was minted with (rotating the secret
    or re-creating a revoked agent voids earlier tokens). ``workflow`` and ``environment`` are
    where the caller is about to act; a token for somewhere else raises :class:`TokenScopeError`.
    ``resources`` are the names (RFC 8707) of what the caller is serving; see :func:`check_audience`.
    """
    claims = tokens.verify(token, now=now)
    if resources is not None:
        check_audience(claims, resources)
    if workflow is not None and workflow != claims.workflow:
        raise TokenScopeError(
            f"token for workflow {claims.workflow!r} used in {workflow!r}",
            details={"token_workflow": claims.workflow, "workflow": workflow},
        )
    if environment is not None and environment != claims.environment:
        raise TokenScopeError(
            f"token for environment {claims.environment!r} used in {environment!r}",
            details={"token_environment": claims.environment, "environment": environment},
        )
    return admit_agent(claims, store.lookup(claims.agent_id), tokens=tokens, store=store, now=now)


def check_audience(claims: TokenClaims, resources: Collection[str]) -> None:
    """Refuse a token bound (RFC 8707) to resources none of which is served here.

    A token minted without a ``resource`` parameter is good for every resource of this Interlock,
    as before resource indicators existed.
    """
    if claims.resources and not any(r in resources for r in claims.resources):
        raise AuthenticationError(
            f"{_INVALID}: issued for another resource ({', '.join(claims.resources)})",
            code="token_invalid",
        )


def admit_agent(
    claims: TokenClaims,
    row: AgentAuthRow | None,
    *,
    tokens: TokenService,
    store: AgentStore,
    now: float | None = None,
) -> AgentPrincipal:
    """The row checks of :func:`authenticate_agent`, for a caller that read the agent's row
    itself (the pipeline reads it together with the run, in one query)."""
    if row is None:
        raise AuthenticationError(f"{_INVALID}: unknown agent", code="token_invalid")
    agent = row.record
    if not agent.active:
        raise AuthenticationError(
            f"agent {agent.id!r} is revoked", code="agent_revoked", details={"agent_id": agent.id}
        )
    if claims.credential != credential_fingerprint(row.secret_hash):
        raise AuthenticationError(
            f"{_INVALID}: minted with a client secret that has since been replaced", code="token_invalid"
        )
    if claims.workflow != agent.workflow or claims.environment != agent.environment:
        raise AuthenticationError(
            f"{_INVALID}: agent's workflow or environment changed", code="token_invalid"
        )
    at = tokens.now() if now is None else now
    if agent.last_seen_at is None or at - agent.last_seen_at >= TOUCH_INTERVAL_S:
        try:
            store.touch(agent.id, now=at)
        except StorageError:
            # last_seen_at is bookkeeping for people; a busy database must not refuse the agent.
            log.warning("could not record last_seen_at for agent %s", agent.id, exc_info=True)
    return AgentPrincipal(agent_id=agent.id, workflow=agent.workflow, environment=agent.environment)


__all__ = [
    "ALGORITHM",
    "AUDIENCE",
    "AccessToken",
    "AgentPrincipal",
    "TokenClaims",
    "TokenService",
    "admit_agent",
    "authenticate_agent",
    "check_audience",
]
