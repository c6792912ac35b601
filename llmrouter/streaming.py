"""Server-sent events: reading an upstream's stream and writing ours."""

from __future__ import annotations

import json
from typing import Any, Iterator

import requests
import sseclient

DONE = b"data: [DONE]\n\n"


def iter_sse(response: requests.Response) -> Iterator[sseclient.Event]:
    """The events of an open streaming response, as they arrive (no buffering)."""
    return sseclient.SSEClient(response.iter_content(chunk_size=None)).events()


def encode_event(payload: dict[str, Any]) -> bytes:
    """One ``data: {...}`` event."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
