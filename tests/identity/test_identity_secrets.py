from __future__ import annotations

import base64
import re

from interlock._internal.identity.secrets import (
    AGENT_SECRET_PREFIX,
    OPERATOR_TOKEN_PREFIX,
    credential_fingerprint,
    hash_secret,
    new_agent_secret,
    new_operator_token,
    secret_matches,
)


def test_secrets_are_prefixed_and_carry_32_random_bytes() -> None:
    for make, prefix in (
        (new_agent_secret, AGENT_SECRET_PREFIX),
        (new_operator_token, OPERATOR_TOKEN_PREFIX),
    ):
        value = make()
        assert value.startswith(prefix)
        body = value.removeprefix(prefix)
        assert re.fullmatch(r"[A-Za-z0-9_\-]+", body)
        assert len(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == 32
    assert len({new_agent_secret() for _ in range(1000)}) == 1000


def test_hash_is_hex_sha256_and_never_the_secret() -> None:
    secret = new_agent_secret()
    digest = hash_secret(secret)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert secret not in digest
    assert secret_matches(secret, digest)
    assert not secret_matches(secret + "x", digest)
    assert not secret_matches(new_agent_secret(), digest)


def test_fingerprint_is_short_and_unrelated_to_hash_bytes() -> None:
    digest = hash_secret(new_agent_secret())
    fp = credential_fingerprint(digest)
    assert len(fp) == 16
    assert fp not in digest
    assert fp == credential_fingerprint(digest)
