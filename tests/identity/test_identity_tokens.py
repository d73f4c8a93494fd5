from __future__ import annotations

import base64
import hashlib
import hmac
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from identity_helpers import Clock
from interlock._internal.identity.agents import AgentCredentials, AgentStore
from interlock._internal.identity.tokens import (
    AUDIENCE,
    AgentPrincipal,
    TokenService,
    authenticate_agent,
)
from interlock._internal.settings import IdentitySettings
from interlock.exceptions import ArgumentsInvalid, AuthenticationError, InterlockError, TokenScopeError


@pytest.fixture
def creds(agent_store: AgentStore) -> AgentCredentials:
    return agent_store.create("drafter", workflow="support-triage", environment="prod", actor="alice")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invalid(tokens: TokenService, token: str) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as err:
        tokens.verify(token)
    assert err.value.code == "token_invalid"
    return err.value


def test_exchange_and_verify(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    access = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    assert access.token_type == "Bearer"
    assert (access.agent_id, access.workflow, access.environment) == ("drafter", "support-triage", "prod")
    assert access.expires_at == int(clock.t) + 900
    assert access.expires_in(clock.t) == 900
    assert access.token not in repr(access)

    header = json.loads(unb64(access.token.split(".")[0]))
    assert header["alg"] == "EdDSA"
    assert header["typ"] == "at+jwt"
    assert header["kid"] == token_service.key_id
    payload = json.loads(unb64(access.token.split(".")[1]))
    assert set(payload) == {"iss", "aud", "sub", "wf", "env", "iat", "nbf", "exp", "jti", "cfp"}
    assert payload["aud"] == AUDIENCE
    assert payload["iss"] == "interlock-test"
    assert creds.client_secret not in access.token

    claims = token_service.verify(access.token)
    assert (claims.agent_id, claims.workflow, claims.environment) == ("drafter", "support-triage", "prod")
    assert claims.expires_at - claims.issued_at == 900
    assert claims.token_id == payload["jti"]

    principal = authenticate_agent(access.token, tokens=token_service, store=agent_store)
    assert principal == AgentPrincipal("drafter", "support-triage", "prod")
    assert agent_store.get("drafter").last_seen_at == clock.t


def test_each_token_is_unique(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    tokens = {
        token_service.verify(
            token_service.exchange(creds.client_id, creds.client_secret, store=agent_store).token
        ).token_id
        for _ in range(20)
    }
    assert len(tokens) == 20


def test_ttl_comes_from_settings_and_can_only_shrink(
    agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    service = TokenService(IdentitySettings(token_ttl_s=60), clock=clock)
    assert service.exchange("drafter", creds.client_secret, store=agent_store).expires_at == int(clock.t) + 60
    assert service.exchange("drafter", creds.client_secret, store=agent_store, ttl_s=5).expires_at == (
        int(clock.t) + 5
    )
    assert service.exchange("drafter", creds.client_secret, store=agent_store, ttl_s=10_000).expires_at == (
        int(clock.t) + 60
    )
    with pytest.raises(ArgumentsInvalid):
        service.exchange("drafter", creds.client_secret, store=agent_store, ttl_s=0)


def test_wrong_secret_and_unknown_client_look_the_same(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    errors = []
    for client_id, secret in [("drafter", "ilsk_" + "A" * 43), ("nobody", creds.client_secret)]:
        with pytest.raises(AuthenticationError) as err:
            token_service.exchange(client_id, secret, store=agent_store)
        errors.append(err.value)
    assert {(e.code, str(e)) for e in errors} == {("invalid_client", "invalid client credentials")}


def test_revoked_agent_gets_no_token_and_issued_tokens_stop_at_once(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    access = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    authenticate_agent(access.token, tokens=token_service, store=agent_store)
    agent_store.revoke("drafter", actor="bob")

    with pytest.raises(AuthenticationError) as err:
        authenticate_agent(access.token, tokens=token_service, store=agent_store)
    assert err.value.code == "agent_revoked"
    # The token itself is still well-formed; only the row says no.
    token_service.verify(access.token)

    with pytest.raises(AuthenticationError) as err:
        token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    assert err.value.code == "agent_revoked"
    # A wrong secret for a revoked agent learns nothing about the revocation.
    with pytest.raises(AuthenticationError) as err:
        token_service.exchange(creds.client_id, "ilsk_nope", store=agent_store)
    assert err.value.code == "invalid_client"


def test_recreated_agent_does_not_revive_old_tokens(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    old = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    agent_store.revoke("drafter", actor="bob")
    new_creds = agent_store.create("drafter", workflow="support-triage", environment="prod", actor="alice")
    with pytest.raises(AuthenticationError) as err:
        authenticate_agent(old.token, tokens=token_service, store=agent_store)
    assert err.value.code == "token_invalid"
    new = token_service.exchange("drafter", new_creds.client_secret, store=agent_store)
    assert authenticate_agent(new.token, tokens=token_service, store=agent_store).agent_id == "drafter"


def test_rotating_the_secret_voids_earlier_tokens(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    old = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    rotated = agent_store.rotate_secret("drafter", actor="alice")
    with pytest.raises(AuthenticationError):
        authenticate_agent(old.token, tokens=token_service, store=agent_store)
    with pytest.raises(AuthenticationError):
        token_service.exchange("drafter", creds.client_secret, store=agent_store)
    new = token_service.exchange("drafter", rotated.client_secret, store=agent_store)
    authenticate_agent(new.token, tokens=token_service, store=agent_store)


def test_expired_token(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    access = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    clock.advance(899)
    token_service.verify(access.token)
    clock.advance(1)
    with pytest.raises(AuthenticationError) as err:
        token_service.verify(access.token)
    assert err.value.code == "token_expired"
    with pytest.raises(AuthenticationError) as err:
        authenticate_agent(access.token, tokens=token_service, store=agent_store)
    assert err.value.code == "token_expired"
    # An explicit ``now`` wins over the service's clock.
    assert token_service.verify(access.token, now=clock.t - 10).agent_id == "drafter"


def test_token_from_the_future_is_refused(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    access = token_service.exchange(
        creds.client_id, creds.client_secret, store=agent_store, now=clock.t + 120
    )
    invalid(token_service, access.token)
    # Small skew between replicas is tolerated.
    skewed = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store, now=clock.t + 20)
    token_service.verify(skewed.token)


def test_signed_with_another_seed_is_refused(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    other = TokenService(IdentitySettings(signing_seed="another-seed", issuer="interlock-test"), clock=clock)
    forged = other.exchange(creds.client_id, creds.client_secret, store=agent_store)
    err = invalid(token_service, forged.token)
    assert isinstance(err.__cause__, jwt.InvalidSignatureError)


def test_same_seed_same_key_across_replicas(
    identity_settings: IdentitySettings, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    a = TokenService(identity_settings, clock=clock)
    b = TokenService(identity_settings, clock=clock)
    assert a.key_id == b.key_id
    b.verify(a.exchange(creds.client_id, creds.client_secret, store=agent_store).token)


def test_no_key_work_until_needed(identity_settings: IdentitySettings) -> None:
    service = TokenService(identity_settings)
    assert "_keys" not in vars(service)
    _ = service.key_id
    assert "_keys" in vars(service)


def test_tampered_payload_is_refused(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials
) -> None:
    access = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store)
    header, payload, signature = access.token.split(".")
    claims = json.loads(unb64(payload))
    claims["wf"] = "billing"
    invalid(token_service, ".".join([header, b64(json.dumps(claims).encode()), signature]))
    claims["wf"] = "support-triage"
    claims["exp"] += 3600
    invalid(token_service, ".".join([header, b64(json.dumps(claims).encode()), signature]))
    # Flip one bit of the signature.
    sig = bytearray(unb64(signature))
    sig[0] ^= 1
    invalid(token_service, ".".join([header, payload, b64(bytes(sig))]))


def _claims(token_service: TokenService, now: float, **overrides: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": "interlock-test",
        "aud": AUDIENCE,
        "sub": "drafter",
        "wf": "support-triage",
        "env": "prod",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now) + 900,
        "jti": "x",
        "cfp": "0" * 16,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_alg_none_is_refused(token_service: TokenService, clock: Clock) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    payload = b64(json.dumps(_claims(token_service, clock.t)).encode())
    invalid(token_service, f"{header}.{payload}.")
    token = jwt.encode(_claims(token_service, clock.t), None, algorithm="none", headers={"typ": "at+jwt"})
    err = invalid(token_service, token)
    assert isinstance(err.__cause__, jwt.InvalidAlgorithmError)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret_is_refused(
    token_service: TokenService, clock: Clock, alg: str
) -> None:
    public = token_service.public_key
    for key in (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH),
    ):
        header = b64(json.dumps({"alg": alg, "typ": "at+jwt"}).encode())
        payload = b64(json.dumps(_claims(token_service, clock.t)).encode())
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(key, f"{header}.{payload}".encode(), digest).digest()
        invalid(token_service, f"{header}.{payload}.{b64(sig)}")


def _signed(token_service: TokenService, claims: dict[str, object], **headers: object) -> str:
    return jwt.encode(
        claims,
        token_service._keys.private,
        algorithm="EdDSA",
        headers={"typ": "at+jwt", **headers},  # type: ignore[arg-type]
    )


def test_wrong_audience_issuer_type_or_claims_are_refused(token_service: TokenService, clock: Clock) -> None:
    now = clock.t
    # Sanity: a hand-made token with our key passes verify.
    token_service.verify(_signed(token_service, _claims(token_service, now)))
    for overrides in (
        {"aud": "interlock:operator"},
        {"iss": "someone-else"},
        {"sub": None},
        {"exp": None},
        {"jti": None},
        {"wf": None},
        {"cfp": None},
        {"wf": 7},
        {"exp": "later"},
        {"exp": True},
    ):
        invalid(token_service, _signed(token_service, _claims(token_service, now, **overrides)))
    invalid(token_service, _signed(token_service, _claims(token_service, now), typ="JWT"))


@pytest.mark.parametrize(
    "garbage",
    ["", "abc", "a.b.c", "a.b", "....", "x" * 5000, "eyJhbGciOiJFZERTQSJ9.e30.", "\x00\xff.\x01.\x02"],
)
def test_malformed_tokens(token_service: TokenService, garbage: str) -> None:
    invalid(token_service, garbage)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=300)
    | st.builds(lambda parts: ".".join(parts), st.lists(st.text(max_size=60), max_size=4))
)
def test_arbitrary_input_only_raises_authentication_error(garbage: str) -> None:
    service = TokenService(IdentitySettings())
    with pytest.raises(AuthenticationError):
        service.verify(garbage)


def test_scope_checks(token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials) -> None:
    token = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store).token
    ok = authenticate_agent(
        token, tokens=token_service, store=agent_store, workflow="support-triage", environment="prod"
    )
    assert ok.agent_id == "drafter"
    with pytest.raises(TokenScopeError, match="token for workflow 'support-triage' used in 'billing'"):
        authenticate_agent(token, tokens=token_service, store=agent_store, workflow="billing")
    with pytest.raises(TokenScopeError, match="environment 'prod' used in 'staging'") as err:
        authenticate_agent(token, tokens=token_service, store=agent_store, environment="staging")
    assert err.value.code == "token_scope"
    assert isinstance(err.value, AuthenticationError)


def test_authenticate_touches_last_seen_sparingly(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    token = token_service.exchange(creds.client_id, creds.client_secret, store=agent_store).token
    authenticate_agent(token, tokens=token_service, store=agent_store)
    first = agent_store.get("drafter").last_seen_at
    assert first == clock.t
    clock.advance(5)
    authenticate_agent(token, tokens=token_service, store=agent_store)
    assert agent_store.get("drafter").last_seen_at == first
    clock.advance(30)
    authenticate_agent(token, tokens=token_service, store=agent_store)
    assert agent_store.get("drafter").last_seen_at == clock.t


def test_errors_are_interlock_errors_with_cause(token_service: TokenService) -> None:
    with pytest.raises(InterlockError) as err:
        token_service.verify("a.b.c")
    assert isinstance(err.value.__cause__, jwt.PyJWTError)


def test_unrelated_private_key_cannot_mint(
    token_service: TokenService, agent_store: AgentStore, creds: AgentCredentials, clock: Clock
) -> None:
    stranger = Ed25519PrivateKey.generate()
    token = jwt.encode(
        _claims(token_service, clock.t),
        stranger,
        algorithm="EdDSA",
        headers={"typ": "at+jwt", "kid": token_service.key_id},
    )
    invalid(token_service, token)
