"""Bearer secrets: generation, hashing for storage, constant-time comparison.

Agent client secrets (``ilsk_…``) and operator tokens (``ilop_…``) are 32 random bytes from the
OS CSPRNG. The prefix makes a leaked value recognisable to people and to secret scanners, and
tells at a glance which kind of credential it is.

Only a hash is stored. The hash is plain SHA-256, deliberately *not* a slow password hash
(bcrypt, scrypt, argon2): those exist to make guessing low-entropy, human-chosen passwords
expensive. A 256-bit random value cannot be guessed at any speed, so a slow hash would add
nothing but latency on every authentication. SHA-256 is also unsalted and deterministic, which
is what lets an operator token be found by an indexed lookup on its hash rather than by scanning
every row. A stolen database therefore yields nothing usable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache

AGENT_SECRET_PREFIX = "ilsk_"
OPERATOR_TOKEN_PREFIX = "ilop_"
SECRET_BYTES = 32

# Compared against when a lookup finds no row, so an unknown id costs the same hash-and-compare
# as a known one and response timing says nothing about which ids exist.
DUMMY_HASH = hashlib.sha256(b"interlock: no such credential").hexdigest()


def new_secret(prefix: str) -> str:
    """A fresh secret: ``prefix`` followed by 32 random bytes, URL-safe base64 without padding."""
    return prefix + secrets.token_urlsafe(SECRET_BYTES)


def new_agent_secret() -> str:
    return new_secret(AGENT_SECRET_PREFIX)


def new_operator_token() -> str:
    return new_secret(OPERATOR_TOKEN_PREFIX)


def hash_secret(secret: str) -> str:
    """The stored form of a secret: lowercase hex SHA-256 of its UTF-8 bytes, prefix included."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Whether ``secret`` hashes to ``stored_hash``, compared in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


@lru_cache(maxsize=1024)  # asked on every action, of the few agents' stored hashes
def credential_fingerprint(stored_hash: str) -> str:
    """A short public tag for one credential, carried in tokens minted from it.

    Derived from the stored hash under its own label, so a token never repeats bytes of the
    stored hash itself; it changes whenever the secret is rotated or the agent re-created.
    """
    return hashlib.sha256(b"interlock/credential-fingerprint/v1:" + stored_hash.encode()).hexdigest()[:16]


__all__ = [
    "AGENT_SECRET_PREFIX",
    "DUMMY_HASH",
    "OPERATOR_TOKEN_PREFIX",
    "SECRET_BYTES",
    "credential_fingerprint",
    "hash_secret",
    "new_agent_secret",
    "new_operator_token",
    "new_secret",
    "secret_matches",
]
