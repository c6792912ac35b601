"""The one fault description every fake upstream obeys, and the queue of faults it owns.

A test says what goes wrong (``Fault``) and queues it on the fake (``fake.script``); each
fake renders it in its own wire format: its error shape, its SSE events, its end event.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Response

HTML_PAGE = "<html><body><h1>502 Bad Gateway</h1><p>nginx</p></body></html>"


@dataclass(frozen=True)
class Fault:
    """What one request gets instead of a normal answer; every field is optional.

    Stream faults count events in the fake's own unit: OpenAI and Mistral count content
    deltas, Anthropic and Gemini every SSE event. ``status``, ``error_type`` and
    ``message`` describe the error answer, or with ``error_event_after`` the error event.
    """

    #: only a request for this upstream model id takes the fault (None: any request)
    model: str | None = None
    #: answer with this error status, in the provider's error shape
    status: int | None = None
    #: with Retry-After (Gemini: a google.rpc.RetryInfo delay, as Gemini sends it)
    retry_after: float | None = None
    #: the provider's own error type (Anthropic's ``overloaded_error``, Gemini's status name)
    error_type: str | None = None
    message: str | None = None
    #: seconds before answering: longer than the client's read timeout is a hang
    delay: float = 0.0
    #: not streamed: send half the body, then reset the connection
    reset_mid_body: bool = False
    #: answer 200 with an HTML page under this content type (a proxy's error page)
    content_type: str | None = None
    #: the 200 body (or the whole stream) verbatim, instead of the answer
    raw: str | None = None
    #: stream: an error event after this many events
    error_event_after: int | None = None
    #: stream: cut the connection after this many events (no end of the chunked body)
    drop_after: int | None = None
    #: stream: end cleanly but early after this many events: no [DONE], no end event
    end_after: int | None = None
    #: stream: an event whose data is not JSON after this many events
    malformed_after: int | None = None
    #: stream: seconds between events
    chunk_pause: float = 0.0
    #: leave usage out of the answer (body and stream)
    no_usage: bool = False
    #: stream: no events at all, only the end marker if the format has one
    empty_stream: bool = False
    #: add this many bytes to the answer (an unknown field; streamed: in the first event)
    padding: int = 0

    def retry_after_header(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}

    def pause(self) -> None:
        if self.delay:
            time.sleep(self.delay)


NO_FAULT = Fault()


class FaultScript:
    """The faults waiting for the next requests, in order; thread-safe.

    A fault with a ``model`` waits for a request to that model; the others go to the next
    request whatever its model, so one failing model can sit beside a healthy one.
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def append(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def extend(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, model: str | None) -> Fault:
        """The first fault for a request to ``model``, removed; ``NO_FAULT`` if none."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.model is None or fault.model == model:
                    return self._faults.pop(index)
        return NO_FAULT

    def __len__(self) -> int:
        with self._lock:
            return len(self._faults)


# --------------------------------------------------------------------------- renderings
# What does not depend on the wire format, shared by the fakes.


def verbatim_answer(fault: Fault, streamed: bool) -> Response | None:
    """The fault's answer when it replaces the API's body whole, in any wire format: a 200
    that is not the API's (what a misconfigured proxy sends), or the script's raw body."""
    if fault.content_type:
        return Response(HTML_PAGE, status=200, content_type=fault.content_type)
    if fault.raw is not None:
        return Response(fault.raw, mimetype="text/event-stream" if streamed else "application/json")
    return None


def reset_mid_body(body: str, content_type: str, environ: dict[str, Any]) -> Response:
    """Half of ``body`` under its full Content-Length, then a TCP reset."""
    data = body.encode()
    connection = environ.get("werkzeug.socket")

    def half_then_reset() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        if connection is not None:
            # Linger 0: closing sends RST instead of FIN, as a crashed peer's kernel does.
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raise ConnectionResetError("scripted reset mid-body")

    headers = {"Content-Length": str(len(data))}
    return Response(half_then_reset(), content_type=content_type, headers=headers)


def padded(body: dict[str, Any], fault: Fault) -> dict[str, Any]:
    """``body`` with ``fault.padding`` bytes in a field no client reads."""
    return {**body, "padding": "x" * fault.padding} if fault.padding else body
