"""A property-based fuzz of the HTTP API: whatever a client sends, the answer is never a
5xx, every error is OpenAI's shape (with ``param`` where a field is at fault), and the
server answers a normal request correctly afterwards.

The default run is small and derandomized, so CI is fast and deterministic. Before a
release, run the long one (random, many more examples)::

    python -m pytest -m fuzz tests/test_fuzz.py

``LLMROUTER_FUZZ_EXAMPLES`` sets its examples per property (default 3000).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_ext.app import create_app
from llmrouter import Router
from tests.conftest import gateway_config
from tests.upstreams.ark_server import FakeArk
from tests.upstreams.loopback import LoopbackServer

pytest_plugins = ["tests.video_fixtures"]

LONG_RUN_EXAMPLES = int(os.environ.get("LLMROUTER_FUZZ_EXAMPLES", "3000"))
GOOD: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
#: seed 001's video task body (a task costs a fraction of a cent here: the long run makes
#: thousands and the paid key must not run dry)
GOOD_VIDEO: dict[str, Any] = {
    "model": "altllm-flex-seedance-2.0",
    "prompt": "a cinematic product reveal",
    "duration": 6,
    "resolution": "720p",
}
VIDEO_TASKS = "/v1/contents/generations/tasks"


@dataclass
class Gateway:
    """The app under fuzz, its keys, and every error the ``llmrouter`` logger logged."""

    client: FlaskClient
    port: int
    keys: dict[str, str]
    router: Router
    #: the status token of a video task of the paid key, for ``{task}`` in a route
    task_token: str = ""
    logged: list[logging.LogRecord] = field(default_factory=list)


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def gateway(_ark_server: FakeArk) -> Iterator[Gateway]:
    # No quota in the way: thousands of requests from one key must all reach the code.
    config = gateway_config(
        quota={"daily_requests": 2**31 - 1, "throttle_seconds": 1, "requests_per_minute": None},
        # provider connections can be stored, video task tokens signed
        secret_key="fuzz-secret-key-0123456789",
        video_poll_seconds=0.01,
    )
    config["providers"].append(
        _ark_server.provider(
            name="Seedance",
            models=[
                {
                    "id": "seedance-2.0",
                    "output_modalities": ["video"],
                    "resolutions": ["480p", "720p", "1080p"],
                    "ratios": ["16:9", "9:16"],
                    "min_duration": 2,
                    "max_duration": 12,
                    "completion_price": "0.00000000001",
                }
            ],
        )
    )
    config["aliases"]["altllm-flex-seedance-2.0"] = "Seedance#seedance-2.0"
    # The standalone app (what ``llmrouter serve`` and gunicorn run): every route is ours.
    app = create_app(config)
    router: Router = app.extensions["llmrouter"].router
    free = router.create_key("free")[1]
    paid_record, paid = router.create_key("paid")
    router.top_up(paid_record.id, "1000")
    admin = router.create_key("admin", admin=True)[1]
    keys = {"free": free, "paid": paid, "admin": admin}
    task_token = router.video.create(GOOD_VIDEO, caller=router.get_key(paid_record.id))
    task_token = task_token.status_token
    handler = _Collect([])
    logging.getLogger("llmrouter").addHandler(handler)
    try:
        with LoopbackServer(app) as server:
            yield Gateway(app.test_client(), server.port, keys, router, task_token, handler.into)
    finally:
        logging.getLogger("llmrouter").removeHandler(handler)
        router.close()


@pytest.fixture(scope="module")
def tool_gateway() -> Iterator[Gateway]:
    """The standalone app with built-in tools: one that answers, one that raises (its
    message becomes the tool's result), for the ``llmrouter`` object's fuzz."""
    app = create_app(
        gateway_config(
            quota={"daily_requests": 2**31 - 1, "throttle_seconds": 1, "requests_per_minute": None}
        )
    )
    router: Router = app.extensions["llmrouter"].router

    @router.tool
    def inventory(sku: str, count: int = 1) -> dict[str, Any]:
        """How many of a product are in stock."""
        return {"sku": sku, "in_stock": 7 * count}

    @router.tool
    def lookup(query: str) -> str:
        """Look something up."""
        raise LookupError(f"nothing found for {query!r}")

    paid_record, paid = router.create_key("paid")
    router.top_up(paid_record.id, "1000")
    keys = {"free": router.create_key("free")[1], "paid": paid}
    handler = _Collect([])
    logging.getLogger("llmrouter").addHandler(handler)
    try:
        with LoopbackServer(app) as server:
            yield Gateway(app.test_client(), server.port, keys, router, logged=handler.into)
    finally:
        logging.getLogger("llmrouter").removeHandler(handler)
        router.close()


def run(examples: int, strategy: st.SearchStrategy[Any], check: Callable[[Any], None]) -> None:
    """``check`` every example of ``strategy``: few and fixed by default, many and random
    in the long run."""
    long_run = examples > 1000

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=not long_run,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def property_(case: Any) -> None:
        check(case)

    property_()


# --------------------------------------------------------------------------- strategies

#: strings that have broken gateways: lone surrogates, NUL, controls, huge and odd text
NASTY_TEXT = st.sampled_from(
    [
        "\ud800",
        "\udfff",
        "a\ud83d",
        "\ude00b",
        "\u0000",
        "\x1b[31m",
        "\u2028",
        "\ufeff",
        "\uffff",
        "😀",
        "",
        " ",
        "#",
        "echo#",
        "#echo",
        "echo#echo\u0000",
        "x" * 5000,
        "null",
        "0",
        "-1",
        "1e309",
        "NaN",
        "../../etc/passwd",
        "%00",
        "${jndi:x}",
        "'; DROP TABLE api_keys; --",
    ]
)
#: hypothesis leaves surrogates out of text unless asked for them
SURROGATE = st.characters(categories=["Cs"])
PLAIN_TEXT = st.text(max_size=40)
#: a string: mostly any text, sometimes a nasty one or one with surrogates
TEXT = st.integers(0, 15).flatmap(
    lambda roll: (
        NASTY_TEXT
        if roll == 0
        else st.text(st.characters() | SURROGATE, max_size=8)
        if roll == 1
        else PLAIN_TEXT
    )
)
INTEGERS = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**53, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    st.integers(),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(st.none(), st.booleans(), INTEGERS, FLOATS, TEXT)
ANY_JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind, one time in sixteen anything at all (so that many
    bodies get past validation and exercise what lies behind it)."""
    return st.integers(0, 15).flatmap(lambda roll: ANY_JSON if roll == 0 else valid)


MODEL = st.sampled_from(
    ["echo", "echo#echo", "echo#echo-premium", "altllm-basic", "ECHO#echo"]
) | st.sampled_from(["echo#nope", "nope#echo", "echo-premium", "echo#Echo"])
# Inside a message, only the leaves are sometimes wrong: with every level able to be
# wrong, hardly a body would reach the provider.
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": maybe(TEXT)}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": maybe(TEXT)})}
    ),
    st.fixed_dictionaries({"type": TEXT}, optional={"input_audio": ANY_JSON}),
)
ID = st.text(min_size=1, max_size=20)
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": maybe(ID),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {
                "name": maybe(st.sampled_from(["lookup", "f"]) | TEXT),
                "arguments": maybe(st.one_of(TEXT, ANY_JSON.map(lambda v: json.dumps(v)))),
            }
        ),
    }
)
CONTENT = st.one_of(TEXT, TEXT, st.lists(PART, min_size=1, max_size=3))
#: messages as OpenAI's role rules have them (a tool message answers a call, an assistant
#: may call tools instead of answering), each field sometimes wrong
MESSAGE = maybe(
    st.one_of(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "developer", "user"]), "content": maybe(CONTENT)},
            optional={"name": maybe(TEXT)},
        ),
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": maybe(TEXT)},
            optional={"tool_calls": maybe(st.lists(TOOL_CALL, max_size=2))},
        ),
        st.fixed_dictionaries(
            {
                "role": st.just("assistant"),
                "tool_calls": st.lists(TOOL_CALL, min_size=1, max_size=2),
            }
        ),
        st.fixed_dictionaries(
            {"role": st.just("tool"), "content": maybe(CONTENT), "tool_call_id": maybe(ID)}
        ),
    )
)
TOOL = maybe(
    st.fixed_dictionaries(
        {
            "type": maybe(st.just("function")),
            "function": maybe(
                st.fixed_dictionaries(
                    {"name": maybe(st.sampled_from(["lookup", "a.b-c_d"]) | TEXT)},
                    optional={
                        "description": maybe(TEXT),
                        "parameters": maybe(st.dictionaries(TEXT, ANY_JSON, max_size=3)),
                        "strict": maybe(st.booleans()),
                    },
                )
            ),
        }
    )
)
RESPONSE_FORMAT = maybe(
    st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
        st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": maybe(
                    st.fixed_dictionaries(
                        {"name": maybe(TEXT)},
                        optional={"schema": maybe(st.dictionaries(TEXT, ANY_JSON, max_size=3))},
                    )
                ),
            }
        ),
    )
)
NUMBER = st.one_of(INTEGERS, FLOATS)
#: every field of OpenAI's chat request, each drawn as a right-ish or a wrong value
OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": maybe(st.booleans()),
    "stream_options": maybe(st.fixed_dictionaries({}, optional={"include_usage": SCALARS})),
    "max_tokens": maybe(INTEGERS),
    "max_completion_tokens": maybe(INTEGERS),
    "temperature": maybe(NUMBER),
    "top_p": maybe(NUMBER),
    "n": maybe(INTEGERS),
    "stop": maybe(st.one_of(TEXT, st.lists(TEXT, max_size=6))),
    "tools": maybe(st.lists(TOOL, max_size=3)),
    "tool_choice": maybe(
        st.one_of(
            st.sampled_from(["none", "auto", "required"]),
            st.fixed_dictionaries(
                {"type": st.just("function"), "function": st.fixed_dictionaries({"name": TEXT})}
            ),
        )
    ),
    "parallel_tool_calls": maybe(st.booleans()),
    "response_format": RESPONSE_FORMAT,
    "seed": maybe(INTEGERS),
    "user": maybe(TEXT),
    "presence_penalty": maybe(NUMBER),
    "frequency_penalty": maybe(NUMBER),
    "logit_bias": maybe(st.dictionaries(TEXT, INTEGERS, max_size=3)),
    "logprobs": maybe(st.booleans()),
    "top_logprobs": maybe(INTEGERS),
    "metadata": maybe(st.dictionaries(TEXT, TEXT, max_size=3)),
    "reasoning_effort": maybe(st.sampled_from(["low", "medium", "high"])),
}
OPTIONAL_FIELDS["unknown"] = ANY_JSON


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Messages in the order strict providers want them (a system prompt, then user and
    assistant in turn, each tool call answered), so bodies get past Claude's and Gemini's
    rules and exercise their translation."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    messages.append({"role": "user", "content": draw(CONTENT)})
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            call = draw(TOOL_CALL)
            call_id = call["id"] if isinstance(call["id"], str) else "call-1"
            messages.append({"role": "assistant", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": draw(TEXT)})
        else:
            messages.append({"role": "assistant", "content": draw(TEXT)})
        messages.append({"role": "user", "content": draw(CONTENT)})
    return messages


@st.composite
def chat_bodies(
    draw: st.DrawFn,
    fields: dict[str, st.SearchStrategy[Any]] = OPTIONAL_FIELDS,
    messages: st.SearchStrategy[list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A chat body with a few of the optional ``fields`` (with all of them, nearly every
    body would have one wrong and never get past validation)."""
    names = draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True))
    if messages is None:
        messages = conversations() | st.lists(MESSAGE, min_size=1, max_size=4)
    body = {"model": draw(MODEL), "messages": draw(messages)}
    return body | {name: draw(fields[name]) for name in names}


CHAT_BODY = chat_bodies()

# The ``llmrouter`` request object (issue 11) has a place in the long run only, against a
# gateway with built-in tools (``tool_gateway``): the default run's bodies stay as they were.
#: the tool_gateway's built-in tools ("lookup" is also a client tool name the fuzz draws: a
#: clash), and names it does not have
BUILTIN_TOOL_NAMES = st.sampled_from(["inventory", "lookup", "nope", "INVENTORY", ""])
LLMROUTER_OPTIONS = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "builtin_tools": maybe(
                st.one_of(st.booleans(), st.lists(BUILTIN_TOOL_NAMES | TEXT, max_size=3))
            ),
            "tool_progress": maybe(st.booleans()),
            "unknown": ANY_JSON,
        },
    )
)
TOOL_LOOP_FIELDS = {**OPTIONAL_FIELDS, "llmrouter": LLMROUTER_OPTIONS}
#: the echo provider calls the tools a user message names, in stages split on " then "
ASKING_FOR_TOOLS = st.lists(
    st.sampled_from(["use inventory", "lookup", "inventory and lookup", "get_weather", "x"]),
    min_size=1,
    max_size=4,
).map(lambda stages: [{"role": "user", "content": " then ".join(stages)}])
#: half of them streamed, so that the streamed loop is fuzzed as often as the whole one
TOOL_LOOP_BODY = st.tuples(
    chat_bodies(
        TOOL_LOOP_FIELDS,
        ASKING_FOR_TOOLS | conversations() | st.lists(MESSAGE, min_size=1, max_size=4),
    ),
    st.booleans(),
).map(lambda drawn: {**drawn[0], "stream": True} if drawn[1] else drawn[0])

#: a connection's strings are stored: the nasty ones come often
STORED_TEXT = st.one_of(NASTY_TEXT, st.text(st.characters() | SURROGATE, max_size=8), PLAIN_TEXT)
# Seed 003's connection fields, each drawn right-ish or wrong. The names and models are
# few, so the connections the fuzz manages to create stay few.
CONNECTION_MODEL_ID = st.sampled_from(["fuzz-model", "gpt-4o", "claude-sonnet-4-6", "no-price"])
PRICE = st.sampled_from(["0.000001", "0", "1", "1.5", "-1", "1e400", "1e-400", "NaN", "x"])
CONNECTION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": maybe(st.sampled_from(["Fuzz", "fuzz", "Fuzz Production", "echo", " Fuzz", "a#b"])),
    "provider": maybe(
        st.sampled_from(["echo", "openai", "anthropic", "custom", "gemini", "mistral", "nope"])
    ),
    "apiKey": maybe(st.sampled_from(["sk-fuzz-0123456789abcdef", ""]) | STORED_TEXT),
    "model": maybe(CONNECTION_MODEL_ID | STORED_TEXT),
    "baseUrl": maybe(
        st.sampled_from(
            ["http://127.0.0.1:9/v1", "https://u:p@h/v1", "ftp://h", "http://h/?q=1", "http://[::1"]
        )
        | STORED_TEXT
    ),
    "configuration": maybe(
        st.fixed_dictionaries(
            {},
            optional={
                "temperature": maybe(NUMBER),
                "maxTokens": maybe(INTEGERS),
                "max_tokens": maybe(INTEGERS),
                "topP": maybe(NUMBER),
                "stop": maybe(st.one_of(STORED_TEXT, st.lists(STORED_TEXT, max_size=6))),
                "seed": maybe(INTEGERS),
                "tools": ANY_JSON,
            },
        )
    ),
    "models": maybe(
        st.lists(
            st.fixed_dictionaries(
                {"id": maybe(CONNECTION_MODEL_ID | STORED_TEXT)},
                optional={
                    "prompt_price": maybe(PRICE | FLOATS),
                    "completion_price": maybe(PRICE),
                    "context_length": maybe(INTEGERS),
                    "max_output_length": maybe(INTEGERS),
                    "fallbacks": maybe(st.lists(STORED_TEXT, max_size=2)),
                    "name": maybe(STORED_TEXT),
                },
            ),
            max_size=3,
        )
    ),
    "status": maybe(st.sampled_from(["active", "disabled", "error"])),
    "unknown": ANY_JSON,
}


@st.composite
def connection_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A connection body: mostly with its two required fields, and a few others."""
    names = draw(st.lists(st.sampled_from(sorted(CONNECTION_FIELDS)), max_size=4, unique=True))
    if draw(st.integers(0, 7)):
        names = sorted({"name", "provider", *names})
    return {name: draw(CONNECTION_FIELDS[name]) for name in names}


CONNECTION_BODY = connection_bodies()

# Seed 001's video task fields, each drawn right-ish or wrong.
VIDEO_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": maybe(
        st.sampled_from(
            ["altllm-flex-seedance-2.0", "Seedance#seedance-2.0", "echo", "nope", "Seedance#"]
        )
        | TEXT
    ),
    "prompt": maybe(st.sampled_from(["a cat", "", " "]) | TEXT),
    "duration": maybe(st.sampled_from([2, 6, 12, 1, 13, 0, -1, 2**31, 6.0, "6", True])),
    "resolution": maybe(st.sampled_from(["480p", "720p", "1080p", "4k", "", "720P"]) | TEXT),
    "ratio": maybe(st.sampled_from(["16:9", "9:16", "5:4", "adaptive"]) | TEXT),
    "images": maybe(
        st.lists(
            st.one_of(
                TEXT,
                st.fixed_dictionaries(
                    {"url": maybe(TEXT)},
                    optional={
                        "role": maybe(
                            st.sampled_from(["first_frame", "last_frame", "reference_image"]) | TEXT
                        )
                    },
                ),
            ),
            max_size=5,
        )
    ),
    "unknown": ANY_JSON,
}


@st.composite
def video_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A video task body: mostly with model and prompt, and a few of the other fields."""
    names = draw(st.lists(st.sampled_from(sorted(VIDEO_FIELDS)), max_size=4, unique=True))
    if draw(st.integers(0, 7)):
        names = sorted({"model", "prompt", *names})
    return {name: draw(VIDEO_FIELDS[name]) for name in names}


VIDEO_BODY = video_bodies()
#: a connection body that stores, and the fields a bad value of each may be blamed on: a
#: kind names the key or URL it needs; a model left unpriced by a change of the kind or
#: the list blames the default model; a longer name, the model ids it no longer fits
GOOD_CONNECTION: dict[str, Any] = {"name": "Fuzz Field", "provider": "echo", "model": "fuzz-model"}
BLAMED = {
    "provider": {"provider", "apiKey", "baseUrl", "model"},
    "models": {"models", "model"},
    "name": {"name", "model", "models"},
}


@st.composite
def one_field_wrong(draw: st.DrawFn) -> tuple[str, Any]:
    """A good body with one field set to anything: a 400 must name that field."""
    name = draw(st.sampled_from(["model", "messages", *OPTIONAL_FIELDS]))
    return name, draw(ANY_JSON)


def encoded(body: Any, draw: st.DrawFn) -> bytes:
    """JSON as clients send it: escaped (Python's default), raw UTF-8, or raw with the
    surrogates passed through as bytes (invalid UTF-8)."""
    style = draw(st.sampled_from(["ascii", "utf8", "surrogatepass"]))
    if style == "ascii":
        return json.dumps(body).encode()
    text = json.dumps(body, ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass" if style == "surrogatepass" else "replace")


ROUTES = [
    "/v1/chat/completions",
    "/v1/models",
    "/v1/models/echo#echo",
    "/v1/models/echo%23echo",
    "/v1/models/nope",
    "/v1/provider",
    "/v1/usage",
    # key routes (never rotating a key the fuzz itself sends: the ids here are unknown)
    "/v1/keys",
    "/v1/keys/me",
    "/v1/keys/key_ffffffffffffffff",
    "/v1/keys/key_ffffffffffffffff/rotate",
    "/v1/keys/key_ffffffffffffffff/topup",
    "/v1/keys/me/rotate/extra",
    "/keys",
    # provider connection routes (seed 003's envelope): config-echo is read-only, the
    # other ids are unknown, so nothing the fuzz relies on is changed or deleted
    "/v1/llm-providers",
    "/llm-providers",
    "/v1/llm-providers/config-echo",
    "/llm-providers/config-echo/test",
    "/v1/llm-providers/config-nope",
    "/v1/llm-providers/prov-ffffffffffffffffffffffffffffffff",
    "/llm-providers/prov-ffffffffffffffffffffffffffffffff/test",
    "/v1/llm-providers/%00",
    "/v1/llm-providers/x/y/z",
    # seed 001's video task routes: a task of the paid key, tokens of nothing
    VIDEO_TASKS,
    "/contents/generations/tasks",
    VIDEO_TASKS + "/{task}",
    "/contents/generations/tasks/{task}",
    VIDEO_TASKS + "/{task}x",
    VIDEO_TASKS + "/not-a-token",
    VIDEO_TASKS + "/%00",
    VIDEO_TASKS + "/WyJ2dGFzay0xIiwia2V5XzEiXQ.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    VIDEO_TASKS + "/x/y",
    "/health",
    "/v1/nowhere",
    "/nowhere",
    "/chat/completions",
    "/models",
    "/models/echo%23echo",
    "/provider",
    "/usage",
    "/v1",
    "/",
]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes | None
    environ: dict[str, str]


@st.composite
def calls(draw: st.DrawFn) -> Call:
    """Any route and method, odd headers, and a body from the schema, from arbitrary JSON,
    or arbitrary bytes."""
    key = draw(st.sampled_from(["free", "paid", "admin", None]))
    header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=30)
    authorization = draw(
        st.one_of(
            st.just(f"Bearer {{{key}}}") if key else st.none(),
            st.sampled_from(["", "Bearer", "Bearer ", "bearer {free}", "Basic {free}", "{free}"]),
            header_text,
            header_text.map(lambda t: "Bearer " + t),
        )
    )
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    content_type = draw(
        st.sampled_from(
            ["application/json", "application/json; charset=latin-1", "text/plain", "", None]
        )
        | header_text
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    body_kind = draw(
        st.sampled_from(["chat", "chat", "connection", "video", "json", "bytes", "none"])
    )
    body: bytes | None
    if body_kind == "chat":
        body = encoded(draw(CHAT_BODY), draw)
    elif body_kind == "connection":
        body = encoded(draw(CONNECTION_BODY), draw)
    elif body_kind == "video":
        body = encoded(draw(VIDEO_BODY), draw)
    elif body_kind == "json":
        body = encoded(draw(ANY_JSON), draw)
    elif body_kind == "bytes":
        body = draw(st.binary(max_size=200))
    else:
        body = None
    environ = {}
    if draw(st.integers(0, 9)) == 0:  # a Content-Length that disagrees with the body
        environ["CONTENT_LENGTH"] = draw(
            st.sampled_from(["0", "1", "-1", "abc", "99999999999999999999", " 5", "1e3"])
        )
    query = draw(
        st.dictionaries(
            st.sampled_from(["key_id", "since", "until", "limit", "before", "x"]),
            TEXT | st.sampled_from(["1", "20", "100", "101", "0", "{task}"]),
            max_size=3,
        )
    )
    return Call(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])),
        path=draw(st.sampled_from(ROUTES)),
        query=query,
        headers=headers,
        body=body,
        environ=environ,
    )


# --------------------------------------------------------------------------- checks


def with_task(gateway: Gateway, text: str) -> str:
    """``text`` with ``{task}`` standing for the paid key's video task token."""
    return text.replace("{task}", gateway.task_token)


def send(gateway: Gateway, call: Call) -> Any:
    headers = dict(call.headers)
    for name, key in gateway.keys.items():  # "{free}" stands for the free key's secret
        headers = {header: value.replace(f"{{{name}}}", key) for header, value in headers.items()}
    return gateway.client.open(
        with_task(gateway, call.path),
        method=call.method,
        query_string={
            k: with_task(gateway, v).encode("utf-8", "surrogatepass") for k, v in call.query.items()
        },
        headers=headers,
        data=call.body,
        environ_overrides=call.environ,
    )


@dataclass
class WireAnswer:
    """An answer read off a socket, with the parts of Flask's test response we check."""

    status_code: int
    mimetype: str
    body: bytes

    def get_data(self) -> bytes:
        return self.body


def send_over_socket(gateway: Gateway, call: Call) -> WireAnswer:
    """The call as bytes on a real connection to werkzeug's server (what ``llmrouter
    serve`` runs): our own request line, headers and Content-Length, as a client may."""
    headers = dict(call.headers)
    for name, key in gateway.keys.items():
        headers = {header: value.replace(f"{{{name}}}", key) for header, value in headers.items()}
    query = urllib.parse.urlencode(
        {k: with_task(gateway, v).encode("utf-8", "surrogatepass") for k, v in call.query.items()}
    )
    path = urllib.parse.quote(with_task(gateway, call.path), safe="/%") + (
        f"?{query}" if query else ""
    )
    body = call.body or b""
    length = call.environ.get("CONTENT_LENGTH", str(len(body)) if call.body is not None else None)
    lines = [f"{call.method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)  # a Content-Length beyond the body ends here
        answer = http.client.HTTPResponse(sock, method=call.method)
        answer.begin()
        data = answer.read()
        mimetype = (answer.getheader("Content-Type") or "").partition(";")[0]
        return WireAnswer(answer.status, mimetype, data)


def assert_well_answered(
    gateway: Gateway, response: Any, *, method: str = "POST", path: str = ""
) -> None:
    """No 5xx, no traceback logged, and any error in OpenAI's shape (below seed 003's
    routes: in its envelope)."""
    body = response.get_data()
    tracebacks = [r for r in gateway.logged if r.exc_info]
    gateway.logged.clear()
    assert not tracebacks, tracebacks[0].exc_info
    assert response.status_code < 500, body[:2000]
    if method == "HEAD" or (method == "OPTIONS" and response.status_code < 400):
        return  # no body for HEAD; werkzeug's own OPTIONS answer is an Allow header
    if response.mimetype == "text/event-stream":
        for line in body.split(b"\n"):
            if line.startswith(b"data: {") and b'"error"' in line[:20]:
                assert_error_shape(json.loads(line[6:]))
        return
    payload = json.loads(body)  # never HTML, never empty
    if path.removeprefix("/v1").startswith("/llm-providers"):
        assert_envelope(payload, response.status_code)
    elif response.status_code >= 400:
        assert_error_shape(payload)


def assert_error_shape(payload: Any) -> None:
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)


def assert_envelope(payload: Any, status: int) -> None:
    """Seed 003's envelope: ``data`` on success, ``error`` with code, message and field."""
    if status < 400:
        assert set(payload) == {"success", "data"} and payload["success"] is True, payload
        return
    assert set(payload) == {"success", "error"} and payload["success"] is False, payload
    error = payload["error"]
    assert set(error) == {"code", "message", "field"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["code"], str) and error["code"]
    assert error["field"] is None or isinstance(error["field"], str)


def assert_healthy(gateway: Gateway) -> None:
    """After whatever came before, a normal request is answered correctly."""
    response = gateway.client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "still here?"}]},
        headers={"Authorization": f"Bearer {gateway.keys['paid']}"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["choices"][0]["message"]["content"] == "still here?"
    assert gateway.client.get("/health").status_code == 200


def check_call(gateway: Gateway, *, wire: bool = False) -> Callable[[Call], None]:
    def check(call: Call) -> None:
        answer = send_over_socket(gateway, call) if wire else send(gateway, call)
        assert_well_answered(gateway, answer, method=call.method, path=call.path)

    return check


def check_chat_body(gateway: Gateway) -> Callable[[tuple[dict[str, Any], bool]], None]:
    def check(case: tuple[dict[str, Any], bool]) -> None:
        body, paid = case
        response = gateway.client.post(
            "/v1/chat/completions",
            data=json.dumps(body),
            headers={
                "Authorization": f"Bearer {gateway.keys['paid' if paid else 'free']}",
                "Content-Type": "application/json",
            },
        )
        assert_well_answered(gateway, response)
        if response.status_code == 400:
            assert response.get_json()["error"]["type"] == "invalid_request_error"

    return check


def check_tool_loop_body(gateway: Gateway) -> Callable[[tuple[dict[str, Any], bool]], None]:
    """A chat body as ``check_chat_body`` checks it; when answered, every tool call the
    client gets (whole or streamed) is a call of one of its own tools, never a built-in one."""

    def check(case: tuple[dict[str, Any], bool]) -> None:
        body, paid = case
        response = gateway.client.post(
            "/v1/chat/completions",
            data=json.dumps(body),
            headers={
                "Authorization": f"Bearer {gateway.keys['paid' if paid else 'free']}",
                "Content-Type": "application/json",
            },
        )
        assert_well_answered(gateway, response)
        if response.status_code == 400:
            assert response.get_json()["error"]["type"] == "invalid_request_error"
        if response.status_code != 200:
            return
        own = {tool["function"]["name"] for tool in body.get("tools") or []}
        if response.mimetype == "text/event-stream":
            events = [
                json.loads(line[6:])
                for line in response.get_data().split(b"\n")
                if line.startswith(b"data: {")
            ]
            called = {
                call["function"]["name"]
                for event in events
                for choice in event.get("choices") or []
                for call in choice.get("delta", {}).get("tool_calls") or []
                if call.get("function", {}).get("name")
            }
        else:
            called = {
                call["function"]["name"]
                for choice in response.get_json()["choices"]
                for call in choice["message"].get("tool_calls") or []
            }
        assert called <= own, (called, own)

    return check


def check_one_field(gateway: Gateway) -> Callable[[tuple[str, Any]], None]:
    def check(case: tuple[str, Any]) -> None:
        name, value = case
        response = gateway.client.post(
            "/v1/chat/completions",
            data=json.dumps({**GOOD, name: value}),
            headers={
                "Authorization": f"Bearer {gateway.keys['free']}",
                "Content-Type": "application/json",
            },
        )
        assert_well_answered(gateway, response)
        if response.status_code == 400:
            error = response.get_json()["error"]
            # the field at fault is named, by its own name or a place inside it
            assert error["param"], error
            assert error["param"].partition("[")[0].partition(".")[0] == name, (name, error)

    return check


def check_video_field(gateway: Gateway) -> Callable[[tuple[str, Any]], None]:
    """Seed 001's body with one field set to anything: a 400 names that field."""

    def check(case: tuple[str, Any]) -> None:
        name, value = case
        response = gateway.client.post(
            VIDEO_TASKS,
            data=json.dumps({**GOOD_VIDEO, name: value}),
            headers={
                "Authorization": f"Bearer {gateway.keys['paid']}",
                "Content-Type": "application/json",
            },
        )
        assert_well_answered(gateway, response)
        if response.status_code == 400:
            error = response.get_json()["error"]
            assert error["param"], error
            assert error["param"].partition("[")[0].partition(".")[0] == name, (name, error)
        if response.status_code == 200:
            task = response.get_json()
            assert task["status_token"] == task["altllm_status_token"]
            poll = gateway.client.get(
                f"{VIDEO_TASKS}/{task['status_token']}",
                headers={"Authorization": f"Bearer {gateway.keys['paid']}"},
            )
            assert poll.status_code == 200, poll.get_data(as_text=True)

    return check


def video_field_cases() -> st.SearchStrategy[tuple[str, Any]]:
    names = st.sampled_from(sorted(VIDEO_FIELDS))
    return names.flatmap(lambda n: st.tuples(st.just(n), VIDEO_FIELDS[n] | ANY_JSON))


def check_connection_field(gateway: Gateway, method: str) -> Callable[[tuple[str, Any]], None]:
    """A good connection body (POST) or change (PATCH, of a connection made for it) with
    one field set to anything: a 400 names that field, nothing is a 5xx."""
    path = "/v1/llm-providers"
    if method == "PATCH":
        name = f"Fuzz Patched {uuid.uuid4().hex[:8]}"  # the long run makes one more
        made = gateway.router.connections.create({**GOOD_CONNECTION, "name": name})
        path += "/" + made.id

    def check(case: tuple[str, Any]) -> None:
        name, value = case
        body = {**GOOD_CONNECTION, name: value} if method == "POST" else {name: value}
        response = gateway.client.open(
            path,
            method=method,
            data=json.dumps(body),
            headers={
                "Authorization": f"Bearer {gateway.keys['admin']}",
                "Content-Type": "application/json",
            },
        )
        assert_well_answered(gateway, response, path=path)
        payload = response.get_json()
        if response.status_code == 400:
            blamed = payload["error"]["field"]
            assert blamed, payload
            assert blamed.partition("[")[0].partition(".")[0] in BLAMED.get(name, {name}), (
                name,
                payload,
            )
        if response.status_code == 201:  # stored: gone again, so the next one is new
            gateway.router.connections.delete(payload["data"]["id"])

    return check


def connection_field_cases() -> st.SearchStrategy[tuple[str, Any]]:
    names = st.sampled_from(sorted(CONNECTION_FIELDS))
    return names.flatmap(lambda n: st.tuples(st.just(n), CONNECTION_FIELDS[n] | ANY_JSON))


#: the free-text fields a connection stores, in a body otherwise good (so that it gets as
#: far as the database, which refuses a lone surrogate)
STORED_STRINGS = st.one_of(
    st.tuples(
        st.just("configuration"),
        st.fixed_dictionaries({"stop": st.lists(STORED_TEXT, min_size=1, max_size=4)}),
    ),
    st.tuples(
        st.just("models"),
        st.lists(
            st.fixed_dictionaries(
                {"id": CONNECTION_MODEL_ID},
                optional={
                    "name": STORED_TEXT,
                    "description": STORED_TEXT,
                    "input_modalities": st.lists(STORED_TEXT, max_size=2),
                    "supported_features": st.lists(STORED_TEXT, max_size=2),
                    "supported_sampling_parameters": st.lists(STORED_TEXT, max_size=2),
                },
            ),
            min_size=1,
            max_size=2,
        ),
    ),
)


# --------------------------------------------------------------------------- the fuzz

CHAT_CASES = st.tuples(CHAT_BODY, st.booleans())


def test_any_request_to_any_route_is_answered_well(gateway: Gateway) -> None:
    run(500, calls(), check_call(gateway))
    assert_healthy(gateway)


def test_any_chat_body_is_answered_well(gateway: Gateway) -> None:
    run(500, CHAT_CASES, check_chat_body(gateway))
    assert_healthy(gateway)


def test_a_wrong_field_is_named(gateway: Gateway) -> None:
    run(500, one_field_wrong(), check_one_field(gateway))
    assert_healthy(gateway)


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_wrong_connection_field_is_named(gateway: Gateway, method: str) -> None:
    run(200, connection_field_cases(), check_connection_field(gateway, method))
    run(100, STORED_STRINGS, check_connection_field(gateway, method))
    assert_healthy(gateway)


def test_a_wrong_video_field_is_named(gateway: Gateway) -> None:
    run(300, video_field_cases(), check_video_field(gateway))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_any_request_to_any_route(gateway: Gateway) -> None:
    run(LONG_RUN_EXAMPLES, calls(), check_call(gateway))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_any_request_over_a_real_socket(gateway: Gateway) -> None:
    run(LONG_RUN_EXAMPLES, calls(), check_call(gateway, wire=True))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_any_chat_body(gateway: Gateway) -> None:
    run(LONG_RUN_EXAMPLES, CHAT_CASES, check_chat_body(gateway))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_a_wrong_field_is_named(gateway: Gateway) -> None:
    run(LONG_RUN_EXAMPLES, one_field_wrong(), check_one_field(gateway))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_a_wrong_video_field_is_named(gateway: Gateway) -> None:
    run(LONG_RUN_EXAMPLES, video_field_cases(), check_video_field(gateway))
    assert_healthy(gateway)


@pytest.mark.fuzz
@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_long_a_wrong_connection_field_is_named(gateway: Gateway, method: str) -> None:
    run(LONG_RUN_EXAMPLES, connection_field_cases(), check_connection_field(gateway, method))
    run(LONG_RUN_EXAMPLES, STORED_STRINGS, check_connection_field(gateway, method))
    assert_healthy(gateway)


@pytest.mark.fuzz
def test_long_any_chat_body_with_builtin_tools(tool_gateway: Gateway) -> None:
    cases = st.tuples(TOOL_LOOP_BODY, st.booleans())
    run(LONG_RUN_EXAMPLES, cases, check_tool_loop_body(tool_gateway))
    assert_healthy(tool_gateway)


@pytest.mark.fuzz
def test_long_a_wrong_llmrouter_object_is_named(tool_gateway: Gateway) -> None:
    cases = st.tuples(st.just("llmrouter"), LLMROUTER_OPTIONS | ANY_JSON)
    run(LONG_RUN_EXAMPLES, cases, check_one_field(tool_gateway))
    assert_healthy(tool_gateway)
