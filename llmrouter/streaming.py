"""Server-sent events: reading an upstream's stream and writing ours."""

from __future__ import annotations

from collections.abc import Iterator

import requests
import sseclient

DONE = b"data: [DONE]\n\n"


def iter_sse(response: requests.Response) -> Iterator[sseclient.Event]:
    """The events of an open streaming response, as they arrive (no buffering)."""
    return sseclient.SSEClient(response.iter_content(chunk_size=None)).events()


def encode_event(json_text: str) -> bytes:
    """One ``data: {...}`` event carrying an already serialized JSON object."""
    return b"data: " + json_text.encode() + b"\n\n"
