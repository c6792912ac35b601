"""Server-sent events: reading an upstream's stream and writing ours."""

from __future__ import annotations

import re
from collections.abc import Iterator

import requests
import sseclient

DONE = b"data: [DONE]\n\n"
_EVENT_BOUNDARY = re.compile(rb"\r?\n\r?\n")


def iter_sse(response: requests.Response, max_event_bytes: int) -> Iterator[sseclient.Event]:
    """The events of an open streaming response, as they arrive (no buffering).

    An event growing past ``max_event_bytes`` raises ``ValueError`` instead of filling
    memory: the parser would otherwise hold it whole, waiting for its end.
    """
    chunks = _bounded_events(response.iter_content(chunk_size=None), max_event_bytes)
    return sseclient.SSEClient(chunks).events()


def _bounded_events(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    # A boundary cut in two by the chunking makes two events count as one: an over-estimate,
    # never an under-estimate.
    pending = 0  # bytes of the event still open at the end of the last chunk
    for chunk in chunks:
        segments = _EVENT_BOUNDARY.split(chunk)
        sizes = [pending + len(segments[0]), *(len(segment) for segment in segments[1:])]
        if max(sizes) > limit:
            raise ValueError(f"a stream event larger than {limit} bytes")
        pending = sizes[-1]
        yield chunk


def encode_event(json_text: str) -> bytes:
    """One ``data: {...}`` event carrying an already serialized JSON object."""
    return b"data: " + json_text.encode() + b"\n\n"
