"""The signed work package in an evidence bundle, checked offline (docs/audit-format.md, §5.3).

The package is a compact JWS signed with the package key, which is not the audit key. The bundle
names the package public key it was exported with, under the bundle's own signature; an auditor
who holds the package key independently passes it and it must be the same key. The check is
written out here rather than left to a JWT library: expiry does not matter for evidence (the
package was used when the run started), and every step is the one the format document states.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from interlock._internal.audit.keys import key_id_of, raw_public_bytes

PACKAGE_TYPE = "interlock-package+jwt"


def package_public_key(public: Ed25519PublicKey) -> dict[str, str]:
    """The package key as a bundle names it."""
    return {"key_id": key_id_of(public), "ed25519": raw_public_bytes(public).hex()}


def check_package(
    package: Mapping[str, Any], run: Mapping[str, Any], *, trusted: Ed25519PublicKey | None = None
) -> tuple[list[str], list[str]]:
    """Problems and warnings about the bundle's ``package`` against its ``run``."""
    pid = package.get("id")
    problems: list[str] = []
    warnings: list[str] = []
    named = package.get("public_key")
    public: Ed25519PublicKey | None = None
    if isinstance(named, Mapping) and isinstance(named.get("ed25519"), str):
        try:
            public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(named["ed25519"]))
        except ValueError:
            problems.append(f"package {pid}: its public key is not an Ed25519 key")
    if trusted is not None:
        if public is not None and raw_public_bytes(public) != raw_public_bytes(trusted):
            problems.append(f"package {pid}: signed with another package key than the trusted one")
        public = trusted
    if public is None:
        if not problems:
            warnings.append(f"package {pid}: signature unchecked (the bundle names no package key)")
        return problems, warnings
    claims = _verified_claims(package.get("token"), public, pid, problems)
    if claims is None:
        return problems, warnings
    if claims != package.get("claims"):
        problems.append(f"package {pid}: stored claims differ from the signed token's")
    if claims.get("jti") != pid or run.get("package_id") != pid:
        problems.append(f"package {pid}: the token's id, the package and the run's package_id differ")
    for claim, field in (("workflow", "workflow"), ("agent", "agent_id"), ("environment", "environment")):
        if claims.get(claim) != run.get(field):
            problems.append(
                f"package {pid}: signed for {claim} {claims.get(claim)!r}, the run's is {run.get(field)!r}"
            )
    return problems, warnings


def _verified_claims(
    token: Any, public: Ed25519PublicKey, pid: Any, problems: list[str]
) -> dict[str, Any] | None:
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3:
        problems.append(f"package {pid}: the token is not a compact JWS")
        return None
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error):
        problems.append(f"package {pid}: the token is not readable base64url JSON")
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        problems.append(f"package {pid}: the token's header or claims are not JSON objects")
        return None
    if header.get("alg") != "EdDSA" or header.get("typ") != PACKAGE_TYPE:
        problems.append(f"package {pid}: the token is not an EdDSA work package")
        return None
    if header.get("kid") != key_id_of(public):
        problems.append(f"package {pid}: the token names key {header.get('kid')!r}, not the package key")
    try:
        public.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except (InvalidSignature, UnicodeEncodeError):
        problems.append(f"package {pid}: the token's signature does not verify with the package key")
        return None
    return claims


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


__all__ = ["PACKAGE_TYPE", "check_package", "package_public_key"]
