"""``router.chat()`` in process: the same pipeline as HTTP, with Python objects and errors."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest

from llmrouter import (
    AuthenticationError,
    ChatCompletion,
    ChatCompletionChunk,
    InvalidRequestError,
    ModelNotFoundError,
    Router,
)
from llmrouter.errors import UpstreamError
from tests.conftest import gateway_config, wait_for
from tests.upstreams.openai_server import FakeOpenAI, Fault

HELLO = [{"role": "user", "content": "hello there"}]


def openai_router(
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    fallbacks: list[str] | None = None,
    **provider_settings: Any,
) -> tuple[Router, str]:
    """A router whose OpenAI provider (no retries) has ``provider_settings``, and a key."""
    config = gateway_config(fake_openai.url)
    provider = config["providers"][1]
    provider.update(max_retries=0, **provider_settings)
    provider["models"][0]["fallbacks"] = fallbacks or []
    router = make_router(config)
    return router, router.create_key("k")[1]


def test_chat_returns_openai_body(router: Router, api_key: str) -> None:
    completion = router.chat(model="echo#echo", messages=HELLO, api_key=api_key)
    assert isinstance(completion, ChatCompletion)
    body = completion.model_dump(exclude_none=True)
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there"},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_provider_name_is_case_insensitive_and_aliases_resolve(
    router: Router, api_key: str
) -> None:
    for name in ("openai#gpt-4o-mini", "OPENAI#gpt-4o-mini", "gpt-4o-mini"):
        assert (
            router.chat(model=name, messages=HELLO, api_key=api_key).model == "OpenAI#gpt-4o-mini"
        )
    assert router.chat(model="altllm-basic", messages=HELLO, api_key=api_key).model == "echo#echo"


def test_unknown_model_names_close_matches(router: Router, api_key: str) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        router.chat(model="OpenAI#gpt-4o-mni", messages=HELLO, api_key=api_key)
    assert caught.value.status == 404 and caught.value.code == "model_not_found"
    assert "OpenAI#gpt-4o-mini" in caught.value.suggestions


def test_unlisted_model_allowed_only_where_configured(make_router: Callable[..., Router]) -> None:
    config = gateway_config()
    config["providers"][0]["allow_unlisted_models"] = True
    router = make_router(config)
    key = router.create_key("k")[1]
    assert (
        router.chat(model="echo#anything-new", messages=HELLO, api_key=key).model
        == "echo#anything-new"
    )
    strict = make_router(gateway_config())
    with pytest.raises(ModelNotFoundError):
        strict.chat(model="echo#anything-new", messages=HELLO, api_key=strict.create_key("k")[1])


def test_every_request_field_is_accepted_and_passed_on(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    params = {
        "max_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "n": 1,
        "seed": 7,
        "user": "u-1",
        "presence_penalty": 0.1,
        "frequency_penalty": -0.1,
        "logit_bias": {"1234": -5},
        "parallel_tool_calls": True,
        "response_format": {"type": "json_object"},
        "logprobs": False,
    }
    router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=api_key, **params)
    sent = fake_openai.requests[-1]
    # The openai kind sends max_tokens as max_completion_tokens (reasoning models refuse it).
    expected = {("max_completion_tokens" if k == "max_tokens" else k): v for k, v in params.items()}
    assert {k: sent[k] for k in expected} == expected
    assert sent["model"] == "gpt-4o-mini"


def test_unknown_fields_reach_openai_compatible_upstreams(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.extra_fields = {"top_k"}
    try:
        router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=api_key, top_k=3)
    finally:
        fake_openai.extra_fields = set()
    assert fake_openai.requests[-1]["top_k"] == 3


def test_content_parts_are_accepted(router: Router, api_key: str) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": " here"},
            ],
        }
    ]
    assert (
        router.chat(model="echo", messages=messages, api_key=api_key).choices[0].message.content
        == "look here"
    )


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 3}, "stop"),
        ({"tool_choice": "always"}, "tool_choice"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        ({"messages": []}, "messages"),
        ({"model": ""}, "model"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ],
)
def test_bad_input_is_a_typed_error_naming_the_field(
    router: Router, api_key: str, params: dict, param: str
) -> None:
    body = {"model": "echo", "messages": HELLO, **params}
    with pytest.raises(InvalidRequestError) as caught:
        router.chat(api_key=api_key, **body)
    assert caught.value.param == param
    assert param in caught.value.message


@pytest.mark.parametrize("secret", [None, "", "sk-llmr-not-a-key"])
def test_missing_or_unknown_key_is_refused(router: Router, secret: str | None) -> None:
    with pytest.raises(AuthenticationError):
        router.chat(model="echo", messages=HELLO, api_key=secret)


def test_revoked_key_is_refused_at_once(router: Router) -> None:
    record, secret = router.create_key("soon gone")
    router.chat(model="echo", messages=HELLO, api_key=secret)
    router.revoke_key(record.id)
    with pytest.raises(AuthenticationError, match="revoked"):
        router.chat(model="echo", messages=HELLO, api_key=secret)


def test_secret_is_stored_only_as_a_hash(router: Router) -> None:
    record, secret = router.create_key("hashed")
    from sqlalchemy import select

    from llmrouter.store.tables import api_keys

    with router.store.transaction() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == record.id)).one()
    assert secret not in [str(v) for v in row]
    assert secret.startswith("sk-llmr-") and record.hint.startswith(secret[:12])


def test_stream_yields_chunk_models_and_bills(router: Router, api_key: str) -> None:
    chunks = list(
        router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=api_key, stream=True)
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hello there"
    (row,) = router.usage()
    assert (row.requests, row.completion_tokens) == (1, 4)


def test_closing_a_stream_early_releases_the_upstream(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(chunk_pause=0.1))
    long_text = [{"role": "user", "content": " ".join(["word"] * 40)}]
    stream = router.chat(
        model="OpenAI#gpt-4o-mini", messages=long_text, api_key=api_key, stream=True
    )
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()
    assert wait_for(lambda: fake_openai.stream_endings == ["aborted"])
    (row,) = router.usage()
    assert row.requests == 1 and row.failed == 0
    assert row.completion_tokens < 40


def test_stream_errors_before_output_raise_and_bill_nothing(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = openai_router(make_router, fake_openai)
    fake_openai.script.append(Fault(status=500))
    with pytest.raises(UpstreamError):
        router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=key, stream=True)
    (row,) = router.usage()
    assert (row.failed, row.cost_nanos) == (1, 0)


def test_echo_honours_max_tokens_and_stop(router: Router, api_key: str) -> None:
    messages = [{"role": "user", "content": "one two three four. five"}]
    short = router.chat(model="echo", messages=messages, api_key=api_key, max_tokens=2)
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == (
        "one two",
        "length",
    )
    stopped = router.chat(model="echo", messages=messages, api_key=api_key, stop=".")
    assert stopped.choices[0].message.content == "one two three four"


def test_usage_asked_for_comes_last_even_when_the_provider_sent_none(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(no_usage=True))
    chunks = list(
        router.chat(
            model="OpenAI#gpt-4o-mini",
            messages=HELLO,
            api_key=api_key,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    # "You said: hello there" is 21 characters: 6 tokens at 4 characters a token
    assert last.usage.completion_tokens == 6
    (row,) = router.usage()
    assert row.completion_tokens == 6


def test_a_stream_closed_before_reading_frees_the_upstream_and_bills_nothing(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(chunk_pause=0.1))
    stream = router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=api_key, stream=True)
    stream.close()
    assert wait_for(lambda: fake_openai.stream_endings == ["aborted"])
    (row,) = router.usage()
    assert (row.failed, row.cost_nanos) == (1, 0)
    remaining = router.complete({"model": "echo", "messages": HELLO}, api_key=api_key).rate_limit
    assert remaining.remaining == 199  # the dropped stream handed its request back


def test_a_stream_dropped_unclosed_is_still_settled(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(chunk_pause=0.1))
    stream = router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=api_key, stream=True)
    next(stream)
    next(stream)
    del stream
    gc.collect()
    assert wait_for(lambda: fake_openai.stream_endings == ["aborted"])
    # On the settlement queue the connection is freed first, then the ticket settled.
    assert wait_for(lambda: len(router.usage()) == 1)
    (row,) = router.usage()
    assert row.requests == 1 and row.failed == 0 and row.completion_tokens > 0


def test_an_empty_stream_is_a_failure_that_falls_back(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = openai_router(make_router, fake_openai, fallbacks=["echo#echo"])
    fake_openai.script.append(Fault(empty_stream=True))
    chunks = list(router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=key, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello there"
    assert {row.provider for row in router.usage()} == {"echo"}


def test_an_oversized_answer_is_refused_not_read(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = openai_router(make_router, fake_openai, max_answer_bytes=100_000)
    fake_openai.script.append(Fault(padding=200_000))
    with pytest.raises(UpstreamError, match="larger than 100000 bytes"):
        router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=key)
    fake_openai.script.append(Fault(padding=50_000))
    assert router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=key).choices


def test_a_model_name_too_long_for_the_ledger_is_refused(
    make_router: Callable[..., Router],
) -> None:
    config = gateway_config()
    config["providers"][0]["allow_unlisted_models"] = True
    router = make_router(config)
    key = router.create_key("k")[1]
    with pytest.raises(InvalidRequestError) as refused:
        router.chat(model="echo#" + "m" * 201, messages=HELLO, api_key=key)
    assert refused.value.param == "model"
    assert router.usage() == []


def test_an_oversized_stream_event_breaks_the_stream_off(
    make_router: Callable[..., Router], fake_openai: FakeOpenAI
) -> None:
    router, key = openai_router(make_router, fake_openai, max_answer_bytes=2048)
    huge = [{"role": "user", "content": "x" * 5000}]  # echoed back in one chunk
    with pytest.raises(UpstreamError, match="unreadable stream event"):
        list(router.chat(model="OpenAI#gpt-4o-mini", messages=huge, api_key=key, stream=True))
    short = router.chat(model="OpenAI#gpt-4o-mini", messages=HELLO, api_key=key, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in short if c.choices)
