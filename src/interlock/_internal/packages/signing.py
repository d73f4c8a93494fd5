"""Signing and offline verification of work packages.

A package is a JWS in compact serialization (RFC 7515) signed with Ed25519 (``alg: EdDSA``,
RFC 8037)::

    header  {"alg": "EdDSA", "kid": "<16 hex digits>", "typ": "interlock-package+jwt"}
    claims  {"format": "interlock.package/v1", "iss", "jti" (package id), "nonce", "iat", "nbf",
             "exp", "workflow", "manifest_version", "agent", "environment", "task",
             "tools": {"<tool>": {"max_calls"?, "arguments": {"<arg>": {"min"?, "max"?,
                                                                        "max_total"?, "one_of"?}}}},
             "budget_usd"?}

The key is derived from ``packages.signing_seed`` with HKDF under its own label, so it is unrelated
to the token and audit keys even if the seeds match. :func:`verify_package` needs only the public
key: a runner checks a package before it starts, with no access to Interlock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from interlock._internal.audit.keys import derive_ed25519, key_id_of, load_public_key
from interlock._internal.packages.models import FORMAT
from interlock.exceptions import AuthenticationError

_HKDF_INFO = b"interlock/work-packages/ed25519/v1"
TYPE = "interlock-package+jwt"
ISSUER = "interlock"
_REQUIRED = ("jti", "nonce", "iat", "exp", "workflow", "agent", "environment", "manifest_version", "tools")


@dataclass(frozen=True)
class PackageKey:
    private: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: str) -> PackageKey:
        return cls(derive_ed25519(seed, info=_HKDF_INFO, setting="packages.signing_seed"))

    @cached_property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @cached_property
    def key_id(self) -> str:
        return key_id_of(self.public)

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers={"kid": self.key_id, "typ": TYPE})


def verify_package(
    token: str, public_key: Ed25519PublicKey | str, *, now: float | None = None, leeway_s: float = 5
) -> dict[str, Any]:
    """The claims of a package signed by the holder of ``public_key`` (a key, PEM or 64 hex digits)
    and not expired; :class:`AuthenticationError` otherwise (``package_invalid`` or
    ``package_expired``). Offline: whether the package was already used or revoked only
    Interlock knows, and it checks that when the run starts."""
    key = load_public_key(public_key) if isinstance(public_key, str) else public_key
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 64_000:
        raise AuthenticationError("not a work package (expected a compact JWS)", code="package_invalid")
    try:
        header = jwt.get_unverified_header(token)
        if header.get("typ") != TYPE:
            raise AuthenticationError(
                f"not a work package: typ is {header.get('typ')!r}", code="package_invalid"
            )
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            issuer=ISSUER,
            leeway=leeway_s,
            options={"require": list(_REQUIRED), "verify_exp": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise AuthenticationError(
            "work package signature does not verify with this key: tampered or signed by another key",
            code="package_invalid",
        ) from exc
    except jwt.PyJWTError as exc:
        raise AuthenticationError(f"work package refused: {exc}", code="package_invalid") from exc
    if claims.get("format") != FORMAT:
        raise AuthenticationError(
            f"unknown work package format {claims.get('format')!r}", code="package_invalid"
        )
    current = time.time() if now is None else now
    # Expiry is checked here rather than by PyJWT so an injected clock is honoured.
    if float(claims["exp"]) + leeway_s <= current:
        raise AuthenticationError(f"work package {claims['jti']} expired", code="package_expired")
    if float(claims.get("nbf", claims["iat"])) - leeway_s > current:
        raise AuthenticationError(f"work package {claims['jti']} is not valid yet", code="package_invalid")
    return claims


__all__ = ["ISSUER", "TYPE", "PackageKey", "verify_package"]
