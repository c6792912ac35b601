"""Secrets at rest: provider API keys stored encrypted under a key derived from the
router's ``secret_key``.

Fernet (``cryptography``): AES-128-CBC with HMAC-SHA256, authenticated, with a version
byte and a timestamp — a ciphertext altered in any byte, or made under another key, does
not decrypt. The Fernet key is derived from ``secret_key`` with HKDF-SHA256 and a purpose
label, so the same ``secret_key`` can sign other things (status tokens) without the two
uses ever sharing a key.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError

_PURPOSE = b"llmrouter provider secrets v1"


class SecretUnreadableError(ConfigError):
    """A stored secret that the configured ``secret_key`` does not decrypt."""


def _fernet(secret_key: str) -> Fernet:
    if not secret_key:
        raise ConfigError("secret_key is empty", key="secret_key")
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


class SecretBox:
    """Encrypts under ``secret_key``; decrypts what it, or any of ``older`` keys, made."""

    def __init__(self, secret_key: str, *, older: tuple[str, ...] = ()) -> None:
        self._current = _fernet(secret_key)
        self._any = MultiFernet([self._current, *(_fernet(k) for k in older)])

    def encrypt(self, plaintext: str) -> str:
        return self._current.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._any.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadableError(
                "a stored provider secret does not decrypt with this secret_key (was it "
                "changed without `llmrouter secrets rotate`?)",
                key="secret_key",
            ) from None

    def reencrypt(self, ciphertext: str) -> str:
        """The same secret under the current key (from any key this box knows)."""
        try:
            return self._any.rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError, ValueError):
            raise SecretUnreadableError(
                "a stored provider secret decrypts under neither the old nor the new secret_key",
                key="secret_key",
            ) from None


def mask(secret: str) -> str:
    """What a response shows of a provider key: its kind prefix and last four characters
    (``sk-…abcd``); short secrets show only the last two."""
    head = secret.split("-", 1)[0] + "-" if "-" in secret[:8] else ""
    tail = secret[-4:] if len(secret) >= 12 else secret[-2:] if len(secret) > 4 else ""
    return f"{head}…{tail}"
