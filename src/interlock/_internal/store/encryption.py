"""Encryption at rest of stored payloads: AES-256-GCM, keys from settings, the key id in every value.

Payload columns (arguments, results, triggers, approval packages and payloads, stored outcomes,
outgoing messages; see ``PAYLOAD_COLUMNS``) use the :class:`Payload` column type. With
``storage.encryption_key_id`` set, each value is written as::

    enc1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>

AES-256-GCM with a fresh 96-bit nonce, over the value's JSON text, with the associated data
``interlock/payload/v1|<table.column>|<key id>``: a value moved to another column, or relabelled
with another key id, does not decrypt. Reading decrypts with the key the value names, so values
written under an older key still read after the current key changes (rotation); a value naming a
key the settings do not hold fails with an error naming that key id. Values without the prefix
are plain JSON (written before encryption was turned on, or with it off) and read as they are: a
JSON text never begins with ``e``.

Purge markers (``{"purged": true, "sha256": …}``) hold only a hash and are stored in clear, so the
retention job can tell purged rows apart in SQL. The audit log is never encrypted: its events carry
hashes of payloads, not payloads, and must stay verifiable by anyone holding the public key.

The keyring belongs to an engine (its dialect), installed by :func:`install_keyring` when the
engine is built from settings; the column type finds it there, so every read and write through
the tables (API, console, replay, evidence, what-if) sees plaintext without knowing about it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr
from sqlalchemy import Text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.types import TypeDecorator

from interlock._internal.store import json_text
from interlock.exceptions import ConfigError, StorageError

PREFIX = "enc1:"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_NONCE = 12


@dataclass(frozen=True)
class Keyring:
    """Data keys by id, and the id new values are encrypted with (``None``: write in clear)."""

    keys: Mapping[str, AESGCM]
    current: str | None

    @classmethod
    def from_settings(cls, keys: Mapping[str, SecretStr], current: str | None) -> Keyring:
        """Parse ``storage.encryption_keys`` and ``storage.encryption_key_id``; :class:`ConfigError`
        names the setting that is wrong."""
        parsed: dict[str, AESGCM] = {}
        for key_id, secret in keys.items():
            if not _KEY_ID.match(key_id):
                raise ConfigError(
                    f"storage.encryption_keys: key id {key_id!r} must be 1-64 letters, digits, "
                    "'.', '_' or '-'"
                )
            parsed[key_id] = AESGCM(_key_bytes(key_id, secret.get_secret_value()))
        if current is not None and current not in parsed:
            raise ConfigError(
                f"storage.encryption_key_id is {current!r}, which storage.encryption_keys does not hold"
                + (f" (it holds {', '.join(sorted(parsed))})" if parsed else "")
            )
        return cls(parsed, current)

    def seal(self, plaintext: str, column: str) -> str:
        assert self.current is not None
        nonce = os.urandom(_NONCE)
        sealed = self.keys[self.current].encrypt(nonce, plaintext.encode("utf-8"), _aad(column, self.current))
        return f"{PREFIX}{self.current}:{base64.urlsafe_b64encode(nonce + sealed).decode('ascii')}"

    def open(self, stored: str, column: str) -> str:
        key_id, blob = _split(stored, column)
        aead = self.keys.get(key_id)
        if aead is None:
            raise ConfigError(_missing_key(key_id, column, configured=sorted(self.keys)))
        try:
            return aead.decrypt(blob[:_NONCE], blob[_NONCE:], _aad(column, key_id)).decode("utf-8")
        except InvalidTag as exc:
            raise StorageError(
                f"a value in {column} does not decrypt with key id {key_id!r}: the key under that id "
                "is not the one it was written with, or the stored value was altered",
                code="payload_undecryptable",
                details={"column": column, "key_id": key_id},
            ) from exc


def _key_bytes(key_id: str, text: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]{64}", text) else _b64(text)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"storage.encryption_keys.{key_id}: expected a 32-byte AES-256 key as 64 hex digits or "
            'URL-safe base64 (python3 -c "import secrets; print(secrets.token_hex(32))")'
        )
    return raw


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(column: str, key_id: str) -> bytes:
    return f"interlock/payload/v1|{column}|{key_id}".encode()


def _split(stored: str, column: str) -> tuple[str, bytes]:
    key_id, sep, blob = stored[len(PREFIX) :].partition(":")
    try:
        raw = _b64(blob) if sep else b""
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) < _NONCE + 16:
        raise StorageError(
            f"a value in {column} is not a readable encrypted payload", code="payload_undecryptable"
        )
    return key_id, raw


def _missing_key(key_id: str, column: str, *, configured: list[str]) -> str:
    held = f"it holds {', '.join(configured)}" if configured else "none is configured"
    return (
        f"a value in {column} is encrypted with key id {key_id!r}, which storage.encryption_keys does "
        f"not hold ({held}); add that key to read it"
    )


# ---- the keyring of an engine ---------------------------------------------------------------------

_KEYRINGS: weakref.WeakKeyDictionary[Dialect, Keyring] = weakref.WeakKeyDictionary()


def install_keyring(engine: Engine, keyring: Keyring) -> None:
    """Make ``engine``'s payload columns encrypt with (and decrypt by) ``keyring``."""
    _KEYRINGS[engine.dialect] = keyring


def keyring_of(engine: Engine) -> Keyring | None:
    return _KEYRINGS.get(engine.dialect)


def open_text(dialect: Dialect, stored: str, column: str) -> str:
    """The plaintext JSON of a stored value (as is when it is not encrypted)."""
    if not stored.startswith(PREFIX):
        return stored
    keyring = _KEYRINGS.get(dialect)
    if keyring is None:
        key_id = stored[len(PREFIX) :].partition(":")[0]
        raise ConfigError(_missing_key(key_id, column, configured=[]))
    return keyring.open(stored, column)


def text_opener(engine: Engine, column: str) -> Callable[[str | None], str | None]:
    """For code that reads a payload column's raw text (``type_coerce``): text → plaintext JSON."""
    dialect = engine.dialect

    def opened(stored: str | None) -> str | None:
        return None if stored is None else open_text(dialect, stored, column)

    return opened


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"purged", "sha256"} and value["purged"] is True


class Payload(TypeDecorator[Any]):
    """A JSON payload column (as ``JSONText``), encrypted at rest when the engine has a current key."""

    impl = Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        text = json_text.dumps(value)
        keyring = _KEYRINGS.get(dialect)
        if keyring is None or keyring.current is None or _is_marker(value):
            return text
        return keyring.seal(text, self.column)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json_text.loads(open_text(dialect, value, self.column))


__all__ = [
    "PREFIX",
    "Keyring",
    "Payload",
    "install_keyring",
    "keyring_of",
    "open_text",
    "text_opener",
]
