"""Secrets cut out of upstream text: a provider's key and header values, in any form an
upstream may echo them, before its words reach a client, a log line or a ledger row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from .config import ProviderSettings

#: what stands where a secret was
REDACTED = "[redacted]"

#: the shortest run of a secret's characters that counts as the secret
RUN = 8

#: configured headers whose values are not secrets (compared case-insensitively)
PUBLIC_HEADERS = frozenset(
    {
        "accept",
        "accept-encoding",
        "accept-language",
        "anthropic-beta",
        "anthropic-version",
        "content-type",
        "openai-beta",
        "user-agent",
    }
)

# Known public prefixes of credentials: a run of 8 inside one of them says nothing of the
# secret ("sk-proj-" is every project key's start), so it is not redacted on its own.
_PREFIXES = ("bearer ", "basic ", "sk-ant-api03-", "sk-ant-", "sk-proj-", "sk-", "aiza")

# Key-shaped tokens an upstream may echo back ("Incorrect API key provided: sk-abc…") even
# when they are not ours (a key the upstream was sent by someone else, or an old one).
_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|key|AIza)[-_A-Za-z0-9*.]{8,}")


class Redactor:
    """Cuts every run of ``RUN`` or more consecutive characters of any of ``secrets`` out
    of a text, case-insensitively, and anything key-shaped.

    A run of 8 covers every changed form seen from upstreams: the exact secret, its last
    characters (``...SECRET-123``), the secret without its prefix, upper-cased, inside
    JSON. A secret shorter than 8 characters is cut only where it stands whole.

    How: every 8-character window of a secret is a *gram*; a text position where any gram
    starts (found by ``str.find``, in C) marks 8 characters, and each stretch of marked
    characters becomes one ``[redacted]``. So a stretch is redacted exactly when it is made
    of runs of 8 of the secrets; the cost is linear in the text for each gram (about one
    millisecond for a 64 KiB message and a 50-character key), and it runs on error paths
    only.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        grams: set[str] = set()
        prefix_grams: set[str] = set()
        short: set[str] = set()
        for secret in secrets:
            lowered = _lower(secret)
            if not lowered:
                continue
            if len(lowered) < RUN:
                short.add(lowered)
                continue
            prefix = next((p for p in _PREFIXES if lowered.startswith(p)), "")
            windows = {lowered[i : i + RUN] for i in range(len(lowered) - RUN + 1)}
            # A window inside the public prefix says nothing of the secret: it is cut only
            # beside a stretch that does (so "sk-proj-" goes with the key it starts).
            inside = {lowered[i : i + RUN] for i in range(len(prefix) - RUN + 1)}
            grams |= windows - inside
            prefix_grams |= inside
        self._grams = tuple(sorted(grams))
        self._prefix_grams = tuple(sorted(prefix_grams - grams))
        self._short = tuple(sorted(short, key=len, reverse=True))

    @classmethod
    def for_provider(cls, settings: ProviderSettings) -> Redactor:
        """The redactor of everything ``settings`` holds that is secret: its API key and
        each configured header value of 8 or more characters, except the values of
        ``PUBLIC_HEADERS`` (a version, a content type). Shorter header values are flags,
        versions or names; cutting every ``1`` or ``true`` would leave messages unreadable,
        and no credential is that short."""
        secrets = [settings.secret() or ""]
        secrets += [
            value
            for name, value in settings.headers.items()
            if name.lower() not in PUBLIC_HEADERS and len(value.strip()) >= RUN
        ]
        return cls(secrets)

    def redact(self, text: str) -> str:
        """``text`` with every secret (in any form of 8 or more of its characters) and
        anything key-shaped replaced by ``[redacted]``."""
        if self._grams or self._short:
            text = self._cut_secrets(text)
        return _KEY_PATTERN.sub(REDACTED, text)

    def _cut_secrets(self, text: str) -> str:
        lowered = _lower(text)
        # (start, end, whether the span alone is a secret's): prefix windows are not.
        spans = [(at, at + RUN, True) for at in _starts(lowered, self._grams, 1)]
        for short in self._short:
            spans += [(at, at + len(short), True) for at in _starts(lowered, [short], len(short))]
        if not spans:
            return text
        spans += [(at, at + RUN, False) for at in _starts(lowered, self._prefix_grams, 1)]
        spans.sort()
        # Overlapping or touching spans make one stretch, cut if any of them is a secret's.
        stretches: list[tuple[int, int, bool]] = []
        for start, end, secret in spans:
            if stretches and start <= stretches[-1][1]:
                first, last, was_secret = stretches[-1]
                stretches[-1] = (first, max(last, end), was_secret or secret)
            else:
                stretches.append((start, end, secret))
        pieces, done = [], 0
        for start, end, secret in stretches:
            if secret:
                pieces += [text[done:start], REDACTED]
                done = end
        pieces.append(text[done:])
        return "".join(pieces)


def _starts(text: str, needles: Iterable[str], step: int) -> Iterator[int]:
    """Every offset in ``text`` where one of ``needles`` starts (the next search of a
    needle begins ``step`` characters after its last hit)."""
    for needle in needles:
        start = text.find(needle)
        while start != -1:
            yield start
            start = text.find(needle, start + step)


def _lower(text: str) -> str:
    """``text`` lower-cased character for character, so that offsets still match (a few
    characters, such as "İ", lower-case to two and are left as they are)."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
