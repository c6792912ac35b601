"""Secrets at rest: provider API keys stored encrypted under a key derived from the
router's ``secret_key``.

Fernet (``cryptography``): AES-128-CBC with HMAC-SHA256, authenticated, with a version
byte and a timestamp — a ciphertext altered in any byte, or made under another key, does
not decrypt. The Fernet key is derived from ``secret_key`` with HKDF-SHA256 and a purpose
label, so the same ``secret_key`` can sign other things (status tokens) without the two
uses ever sharing a key. A new ``secret_key`` takes the stored secrets along by
``rotate_secrets`` (``llmrouter secrets rotate``).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ConfigError

if TYPE_CHECKING:
    from .store import Store

_PURPOSE = b"llmrouter provider secrets v1"


class SecretUnreadableError(ConfigError):
    """A stored secret that the configured ``secret_key`` does not decrypt. A request that
    needs it (changing or testing the connection) is a 409: the request is sound, the
    router's key is not the one the secret was stored under."""

    status = 409
    type = "invalid_request_error"
    code = "secret_unreadable"


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
                "changed without `llmrouter secrets rotate`?); giving the connection its "
                "apiKey again stores it under this one",
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


def rotate_secrets(store: Store, new_secret_key: str, old_secret_key: str) -> int:
    """Re-encrypt every provider secret in ``store`` under ``new_secret_key``; returns how
    many (``llmrouter secrets rotate``).

    A secret may be under either key, so a second run, or a run after some secrets were
    re-encrypted elsewhere, is fine. One transaction: a secret that decrypts under neither
    key is a ``SecretUnreadableError`` naming its connection, and nothing is changed.
    It works on the store alone (no Router, whose directory would try the new key on
    secrets still under the old one).

    For a fleet sharing one database:

    1. With the new ``secret_key`` configured and the old one in an environment variable,
       run ``llmrouter secrets rotate --old-secret-env VAR`` once, from any machine.
    2. Restart every process with the new ``secret_key``.

    The rotation bumps the connections' change counter, so a process still on the old key
    reloads within about a second, cannot decrypt, logs a warning for each connection and
    leaves it out: until it is restarted its stored connections do not route there (a 404
    ``model_not_found``, never a 500); its config-file providers are untouched. A
    connection created or changed meanwhile by a process on the old key is stored under
    the old key: run the rotation again once every process has the new key.
    """
    box = SecretBox(new_secret_key, older=(old_secret_key,))
    unreadable = []
    for record in store.list_connections()[1]:
        if record.api_key_encrypted is None:
            continue
        try:
            box.decrypt(record.api_key_encrypted)
        except SecretUnreadableError:
            unreadable.append(record.id)
    if unreadable:
        raise SecretUnreadableError(
            "the stored API keys of the provider connections "
            f"{', '.join(unreadable)} decrypt under neither the old nor the new "
            "secret_key; nothing was re-encrypted",
            key="secret_key",
        )
    # a connection changed since the check above still fails the one transaction whole
    return store.reencrypt_secrets(box.reencrypt)


#: a key this long keeps at least 8 characters hidden beside its prefix and last four
_LONG = 16
#: below this, a key shows nothing at all
_SHORT = 8


def mask(secret: str) -> str:
    """What a response shows of a provider key: ``sk-…abcd`` — a short kind prefix (up
    to its ``-`` in the first four characters) and the last four characters, for a key of
    16 characters or more; shorter keys show only their last two (under 8: nothing)."""
    if len(secret) >= _LONG:
        dash = secret.find("-", 0, 4)
        return f"{secret[: dash + 1]}…{secret[-4:]}"
    return "…" + (secret[-2:] if len(secret) >= _SHORT else "")
