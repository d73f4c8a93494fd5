"""The audit signing key: Ed25519, derived from ``audit.signing_seed``, separate from the token key.

Checkpoints and evidence bundles are signed with it. Every replica that shares the seed derives the
same key, so any of them can write checkpoints and export bundles that one published public key
verifies. Auditors hold only the public key (``interlock audit public-key``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from interlock._internal.audit.canonical import canonical_json
from interlock._internal.settings import AuditSettings
from interlock.exceptions import ConfigError

# Its own HKDF label: the same seed string configured for tokens and audit still yields two
# unrelated keys, so a leaked token key cannot forge audit evidence.
_HKDF_INFO = b"interlock/audit/checkpoint-and-evidence-signing/ed25519/v1"
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


def key_id_of(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the first 16 hex digits of SHA-256 over its raw bytes."""
    return hashlib.sha256(raw_public_bytes(public)).hexdigest()[:16]


def derive_ed25519(seed: str, *, info: bytes, setting: str) -> Ed25519PrivateKey:
    """An Ed25519 key derived from a settings seed (HKDF-SHA256); ``info`` keeps each use's key apart."""
    if not seed:
        raise ConfigError(f"{setting} is empty; set it to a long random string")
    material = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(seed.encode("utf-8"))
    return Ed25519PrivateKey.from_private_bytes(material)


def raw_public_bytes(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class AuditKey:
    """The private audit key. Build with :meth:`from_seed` or :meth:`from_settings`."""

    private: Ed25519PrivateKey

    @classmethod
    def from_seed(cls, seed: str) -> AuditKey:
        return cls(derive_ed25519(seed, info=_HKDF_INFO, setting="audit.signing_seed"))

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AuditKey:
        return cls.from_seed(settings.signing_seed)

    @cached_property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @cached_property
    def key_id(self) -> str:
        return key_id_of(self.public)

    @property
    def public_hex(self) -> str:
        return raw_public_bytes(self.public).hex()

    @property
    def public_pem(self) -> str:
        return self.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def sign(self, payload: Any) -> str:
        """Hex Ed25519 signature over the payload's canonical JSON."""
        return self.private.sign(canonical_json(payload)).hex()


def verify_signature(public: Ed25519PublicKey, payload: Any, signature_hex: object) -> bool:
    """Whether ``signature_hex`` is the key's signature over the payload's canonical JSON."""
    try:
        message = canonical_json(payload)
    except (ValueError, TypeError):
        return False
    return verify_signature_bytes(public, message, signature_hex)


def verify_signature_bytes(public: Ed25519PublicKey, message: bytes, signature_hex: object) -> bool:
    """Whether ``signature_hex`` is the key's signature over exactly ``message``."""
    if not isinstance(signature_hex, str) or len(signature_hex) != 128:
        return False
    try:
        public.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def trusted_keys(settings: AuditSettings) -> dict[str, Ed25519PublicKey]:
    """Every public key checkpoints may be signed with, by key id: the current key and the retired
    ones listed in ``audit.retired_public_keys`` (kept after a rotation so old checkpoints verify)."""
    current = AuditKey.from_settings(settings).public
    keys = {key_id_of(current): current}
    for text in settings.retired_public_keys:
        public = load_public_key(text)
        keys[key_id_of(public)] = public
    return keys


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse a public key given as 64 hex digits (raw Ed25519) or as a PEM ``PUBLIC KEY`` block."""
    stripped = text.strip()
    if _HEX_KEY.match(stripped):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(stripped))
    if "-----BEGIN PUBLIC KEY-----" in stripped:
        try:
            key = load_pem_public_key(stripped.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ConfigError(f"public key: not a readable PEM block: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"public key: expected an Ed25519 key, got {type(key).__name__}")
        return key
    raise ConfigError("public key: expected 64 hex digits or a PEM 'PUBLIC KEY' block")


__all__ = [
    "AuditKey",
    "key_id_of",
    "load_public_key",
    "raw_public_bytes",
    "trusted_keys",
    "verify_signature",
    "verify_signature_bytes",
]
