"""OpenID Connect sign-in for operators: authorization code with PKCE (through Authlib), ID tokens
checked with PyJWT against the provider's published keys, groups mapped to roles and workflows.

A person who signs in becomes (or updates) the operator ``sso.<username>`` (characters other than
letters, digits, ``_``, ``.`` and ``-`` become ``-``): their roles and workflows are the union of
what ``oidc.groups`` grants their groups, recomputed at every sign-in (a change is an
``operator.synced`` audit event), so removing someone from a group at the identity provider takes
effect on their next sign-in. Someone whose groups grant nothing is refused. Local operators (API
tokens, ``interlock operators``) work as before.

The operator API also accepts an ID token from the provider as the bearer token (audience: this
client), checked and mapped the same way.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import append_event
from interlock._internal.identity.agents import check_name
from interlock._internal.identity.operators import ACTIVE, Operator, check_role
from interlock._internal.identity.secrets import hash_secret, new_operator_token
from interlock._internal.settings import OidcSettings
from interlock._internal.store.engine import transaction
from interlock._internal.store.tables import operators
from interlock.exceptions import AuthenticationError, ConfigError, PermissionDenied

PREFIX = "sso."
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


@dataclass(frozen=True)
class Authorization:
    """What the browser carries between the redirect to the provider and the callback."""

    url: str
    state: str
    nonce: str
    code_verifier: str


class OidcService:
    def __init__(
        self, settings: OidcSettings, engine: Engine, *, redirect_url: str | None, timeout_s: float = 10.0
    ) -> None:
        if not settings.enabled:
            raise ConfigError("oidc.issuer and oidc.client_id must be set for single sign-on")
        for grant in settings.groups.values():
            for role in grant.roles:
                check_role(role)
        self.settings = settings
        self.engine = engine
        self.redirect_url = settings.redirect_url or redirect_url
        self.timeout_s = timeout_s
        self._metadata: dict[str, Any] | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    # ---- the provider --------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            issuer = str(self.settings.issuer).rstrip("/")
            data = self._get(f"{issuer}/.well-known/openid-configuration")
            if data.get("issuer", "").rstrip("/") != issuer:
                raise ConfigError(f"the provider at {issuer} names another issuer: {data.get('issuer')!r}")
            self._metadata = data
        return self._metadata

    def _get(self, url: str) -> dict[str, Any]:
        try:
            response = httpx.get(url, timeout=self.timeout_s, follow_redirects=False)
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigError(f"identity provider: cannot read {url}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"identity provider: {url} did not answer a JSON object")
        return data

    def _key_for(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthenticationError(
                f"not a token from the identity provider: {exc}", code="token_invalid"
            ) from exc
        for refresh in (False, True):
            with self._lock:
                if self._keys is None or refresh:
                    self._keys = jwt.PyJWKSet.from_dict(self._get(self.metadata()["jwks_uri"]))
                keys = self._keys
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise AuthenticationError("the identity provider has no key for this token", code="token_invalid")

    def _client(self, **kwargs: Any) -> OAuth2Client:
        secret = self.settings.client_secret
        return OAuth2Client(
            client_id=self.settings.client_id,
            client_secret=secret.get_secret_value() if secret is not None else None,
            token_endpoint_auth_method="client_secret_basic" if secret is not None else "none",
            scope=self.settings.scopes,
            redirect_uri=self.redirect_url,
            code_challenge_method="S256",
            timeout=self.timeout_s,
            **kwargs,
        )

    # ---- the code flow ---------------------------------------------------------------------------

    def begin(self) -> Authorization:
        """Where to send the browser, and the state, nonce and PKCE verifier to keep for the callback."""
        if not self.redirect_url:
            raise ConfigError(
                "set oidc.redirect_url or server.public_url so the provider can send people back"
            )
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(24)
        with self._client() as client:
            url, state = client.create_authorization_url(
                self.metadata()["authorization_endpoint"], code_verifier=verifier, nonce=nonce
            )
        return Authorization(url=url, state=state, nonce=nonce, code_verifier=verifier)

    def finish(
        self, *, code: str, state: str, expected_state: str, nonce: str, code_verifier: str
    ) -> Operator:
        """Exchange the code (with the PKCE verifier), check the ID token, and sync the operator."""
        if not secrets.compare_digest(state, expected_state):
            raise AuthenticationError(
                "the sign-in answer does not match this browser's request", code="sso_state"
            )
        try:
            with self._client(state=expected_state) as client:
                token = client.fetch_token(
                    self.metadata()["token_endpoint"], code=code, code_verifier=code_verifier
                )
        except (OAuth2Error, httpx.HTTPError) as exc:
            raise AuthenticationError(
                f"the identity provider refused the sign-in: {exc}", code="sso_refused"
            ) from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise AuthenticationError("the identity provider returned no ID token", code="sso_refused")
        claims = self.verify(id_token, nonce=nonce)
        if self.settings.groups_claim not in claims and isinstance(token.get("access_token"), str):
            claims = {**self._userinfo(str(token["access_token"])), **claims}
        return self.sync(claims)

    def _userinfo(self, access_token: str) -> dict[str, Any]:
        endpoint = self.metadata().get("userinfo_endpoint")
        if not endpoint:
            return {}
        try:
            response = httpx.get(
                endpoint, headers={"Authorization": f"Bearer {access_token}"}, timeout=self.timeout_s
            )
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def verify(self, id_token: str, *, nonce: str | None = None) -> dict[str, Any]:
        """The claims of an ID token this provider issued to this client; AuthenticationError otherwise."""
        key = self._key_for(id_token)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key,
                algorithms=_ALGORITHMS,
                audience=self.settings.client_id,
                issuer=self.metadata()["issuer"],
                leeway=30,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"ID token refused: {exc}", code="token_invalid") from exc
        if nonce is not None and not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise AuthenticationError("ID token refused: the nonce does not match", code="token_invalid")
        return claims

    def authenticate_bearer(self, token: str) -> Operator:
        """An operator API bearer token that is an ID token from the provider."""
        return self.sync(self.verify(token))

    # ---- groups → an operator ------------------------------------------------------------------

    def grants(self, groups: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        roles: set[str] = set()
        workflows: set[str] = set()
        every = False
        for group in groups:
            grant = self.settings.groups.get(group)
            if grant is None or not grant.roles:
                continue
            roles.update(grant.roles)
            if grant.workflows is None:
                every = True
            else:
                workflows.update(grant.workflows)
        return tuple(sorted(roles)), None if every else tuple(sorted(workflows))

    def sync(self, claims: dict[str, Any]) -> Operator:
        name = claims.get(self.settings.username_claim) or claims.get("sub")
        if not isinstance(name, str) or not name:
            raise AuthenticationError("the ID token names nobody", code="token_invalid")
        raw = claims.get(self.settings.groups_claim) or []
        groups = [raw] if isinstance(raw, str) else [g for g in raw if isinstance(g, str)]
        roles, workflows = self.grants(groups)
        operator_id = check_name("username", (PREFIX + _UNSAFE.sub("-", name))[:128])
        if not roles:
            raise PermissionDenied(
                f"{name} signed in, but none of their groups ({', '.join(groups) or 'none'}) grants an "
                "Interlock role; ask an administrator to map a group in oidc.groups",
                code="sso_no_role",
            )
        values = {"roles": list(roles), "workflows": None if workflows is None else list(workflows)}
        with transaction(self.engine) as conn:
            row = conn.execute(
                select(operators.c.roles, operators.c.workflows, operators.c.status)
                .where(operators.c.id == operator_id)
                .with_for_update()
            ).first()
            if row is not None and row.status != ACTIVE:
                raise AuthenticationError(f"operator {operator_id!r} is disabled", code="operator_disabled")
            if row is None:
                # No API token is ever shown for an SSO operator: a random one is stored so the
                # console session can bind to it, as for local operators.
                conn.execute(
                    insert(operators).values(
                        id=operator_id,
                        token_hash=hash_secret(new_operator_token()),
                        status=ACTIVE,
                        created_at=time.time(),
                        **values,
                    )
                )
            elif list(row.roles) == values["roles"] and row.workflows == values["workflows"]:
                return Operator(id=operator_id, roles=roles, workflows=workflows)
            else:
                conn.execute(update(operators).where(operators.c.id == operator_id).values(**values))
            append_event(
                conn,
                kind="operator.synced",
                actor=f"oidc:{self.settings.issuer}",
                data={"operator_id": operator_id, "groups": sorted(groups), **values, "created": row is None},
            )
        return Operator(id=operator_id, roles=roles, workflows=workflows)


__all__ = ["PREFIX", "Authorization", "OidcService"]
