"""A minimal, fast OpenAI-compatible upstream on 127.0.0.1 for the benchmarks: an asyncio
HTTP/1.1 keep-alive server in its own process, answering with fixed bodies serialized once.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

MODEL = "gpt-4o-mini"
_USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
_START_SECONDS = 30.0
DEFAULT_CHUNKS = 16


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def _completion() -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
        "system_fingerprint": "fp_bench",
    }
    return _response("200 OK", "application/json", json.dumps(body).encode())


def _stream(chunks: int, include_usage: bool) -> bytes:
    """``chunks`` content chunks of one token each, between the role chunk and the stop."""
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": choices,
            **extra,
        }
        return "data: " + json.dumps(payload) + "\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> str:
        return event([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}])

    events = [delta({"role": "assistant", "content": ""})]
    # each chunk says something new: LiteLLM ends a stream that repeats one chunk as a loop
    events += [delta({"content": f" w{i}"}) for i in range(chunks)]
    events.append(delta({}, "stop"))
    if include_usage:
        usage = {"prompt_tokens": 9, "completion_tokens": chunks, "total_tokens": 9 + chunks}
        events.append(event([], usage=usage))
    events.append("data: [DONE]\n\n")
    # As OpenAI sends a stream: chunked transfer encoding, one HTTP chunk per event. (With a
    # Content-Length instead, requests' iter_content(chunk_size=None) reads the whole body
    # before handing over its first byte.)
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        "Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
    )
    framed = [head.encode()]
    for text in events:
        data = text.encode()
        framed.append(b"%x\r\n%b\r\n" % (len(data), data))
    framed.append(b"0\r\n\r\n")
    return b"".join(framed)


class _Answers:
    """The answers, each serialized once: a completion, and a stream of as many content
    chunks as the request's ``max_completion_tokens`` or ``max_tokens`` (16 when none)."""

    def __init__(self) -> None:
        self.completion = _completion()
        self.not_found = _response("404 Not Found", "application/json", b'{"error":"not found"}')
        self._streams: dict[tuple[int, bool], bytes] = {}

    def for_request(self, path: str, body: bytes) -> bytes:
        if not path.endswith("/chat/completions"):
            return self.not_found
        request = json.loads(body)
        if not request.get("stream"):
            return self.completion
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        chunks = int(limit or DEFAULT_CHUNKS)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        answer = self._streams.get((chunks, include_usage))
        if answer is None:
            answer = self._streams[chunks, include_usage] = _stream(chunks, include_usage)
        return answer


class _HTTPConnection(asyncio.Protocol):
    """One client connection: requests with Content-Length bodies, answered in order."""

    def __init__(self, answers: _Answers) -> None:
        self._answers = answers
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return
            body = bytes(self._buffer[end + 4 : end + 4 + length])
            del self._buffer[: end + 4 + length]
            path = head[0].split(" ")[1]
            assert self._transport is not None
            self._transport.write(self._answers.for_request(path, body))


async def _serve(ready: Connection) -> None:
    answers = _Answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HTTPConnection(answers), "127.0.0.1", 0)
    ready.send(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def _main(ready: Connection) -> None:
    asyncio.run(_serve(ready))


@contextmanager
def serve_upstream() -> Iterator[str]:
    """Start the upstream in a child process; yield its base URL (``http://127.0.0.1:<port>``)."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_main, args=(sender,), daemon=True)
    process.start()
    try:
        if not receiver.poll(_START_SECONDS):
            raise RuntimeError("the benchmark upstream did not start")
        yield f"http://127.0.0.1:{receiver.recv()}"
    finally:
        process.terminate()
        process.join(5)
