"""No input is a 500: strings no encoder can write, integers no column or provider can
carry, and bodies that are broken on the wire all get a 400 in OpenAI's shape."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.errors import InvalidRequestError
from tests.conftest import gateway_config
from tests.upstreams.loopback import LoopbackServer

GOOD: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
BAD = "\ud800"  # a lone UTF-16 surrogate: valid JSON as an escape, no Unicode character
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


@pytest.fixture
def router(make_router: Callable[..., Router]) -> Router:
    return make_router(gateway_config())


@pytest.fixture
def api_key(router: Router) -> str:
    return router.create_key("bounds")[1]


@pytest.fixture
def app(router: Router) -> Flask:
    app = Flask("host-app")
    LLMRouter(app, router=router)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def chat(client: FlaskClient, key: str, body: dict[str, Any] | bytes) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return client.post(
        "/v1/chat/completions",
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def assert_invalid(response: Any, param: str | None) -> dict[str, Any]:
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param:
        assert param in error["message"]
    return error


# --------------------------------------------------------------------------- strings


def _with_tool_call(arguments: str) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
    return {**GOOD, "messages": [*GOOD["messages"], {"role": "assistant", "tool_calls": [call]}]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**GOOD, "messages": [{"role": "user", "content": BAD}]}, "messages[0].content"),
        (
            {
                **GOOD,
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "a" + BAD + "b"}]},
                ],
            },
            "messages[1].content[0].text",
        ),
        ({**GOOD, "user": BAD}, "user"),
        ({**GOOD, "model": BAD}, "model"),
        ({**GOOD, "messages": [{"role": BAD, "content": "hi"}]}, "messages[0].role"),
        ({**GOOD, "tools": [{**TOOL, "function": {"name": BAD}}]}, "tools[0].function.name"),
        (
            {
                **GOOD,
                "tools": [
                    {
                        **TOOL,
                        "function": {
                            "name": "lookup",
                            "parameters": {"properties": {"city": {"description": BAD}}},
                        },
                    }
                ],
            },
            "tools[0].function.parameters.properties.city.description",
        ),
        ({**GOOD, "stop": ["ok", "\udfff"]}, "stop[1]"),
        ({**GOOD, "metadata": {"trace": BAD}}, "metadata.trace"),
        ({**GOOD, "metadata": {"a.b": BAD}}, 'metadata["a.b"]'),
        ({**GOOD, "metadata": {BAD: "x"}}, "metadata"),
        (
            _with_tool_call('{"city": "' + BAD + '"}'),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {
                **GOOD,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"enum": ["ok", BAD]}},
                },
            },
            "response_format.json_schema.schema.enum[1]",
        ),
        ({**GOOD, "unknown_field": [{"deep": [BAD]}]}, "unknown_field[0].deep[0]"),
    ],
)
def test_a_lone_surrogate_anywhere_is_400_naming_the_field(
    client: FlaskClient, api_key: str, body: dict[str, Any], param: str
) -> None:
    error = assert_invalid(chat(client, api_key, body), param)
    assert "surrogate" in error["message"]


@pytest.mark.parametrize(
    ("arguments", "where"),
    [
        ('{"city": "\\ud800"}', "'city'"),
        ('{"\\udfff": 1}', "its JSON has a key"),
        ('{"temperature": NaN}', "'temperature' must be a finite number"),
        ('{"a": [1, Infinity]}', "'a[1]'"),
    ],
)
def test_a_tool_calls_arguments_are_checked_as_the_json_they_hold(
    client: FlaskClient, api_key: str, arguments: str, where: str
) -> None:
    # Adapters parse arguments into objects and send them on (Anthropic's input, Gemini's
    # args): an escape in the string would become a surrogate there.
    error = assert_invalid(
        chat(client, api_key, _with_tool_call(arguments)),
        "messages[1].tool_calls[0].function.arguments",
    )
    assert where in error["message"]


def test_a_tool_calls_arguments_that_are_not_json_are_left_to_the_provider(
    client: FlaskClient, api_key: str
) -> None:
    response = chat(client, api_key, _with_tool_call("not json \\u and NaN"))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_surrogate_encoded_as_utf8_bytes_is_400_naming_the_field(
    client: FlaskClient, api_key: str
) -> None:
    # json.loads decodes bytes with "surrogatepass": ED A0 80 becomes "\ud800"
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'
    assert_invalid(chat(client, api_key, raw), "messages[0].content")


def test_surrogate_pairs_and_other_scripts_are_fine(client: FlaskClient, api_key: str) -> None:
    text = "😀 déjà vu, 東京, \u0000 and \uffff"
    response = chat(client, api_key, {**GOOD, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_number_that_is_not_finite_is_400_naming_the_field(
    client: FlaskClient, api_key: str, number: str
) -> None:
    raw = '{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}'
    assert_invalid(chat(client, api_key, (raw % number).encode()), "temperature")
    raw = '{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": [1, %s]}'
    assert_invalid(chat(client, api_key, (raw % number).encode()), "x[1]")


def test_a_model_name_with_control_characters_is_400(client: FlaskClient, api_key: str) -> None:
    assert_invalid(chat(client, api_key, {**GOOD, "model": "echo\u0000"}), "model")


def test_the_check_is_the_routers_so_in_process_calls_get_it_too(
    router: Router, api_key: str
) -> None:
    from llmrouter.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError) as caught:
        router.chat(model="echo", messages=[{"role": "user", "content": BAD}], api_key=api_key)
    assert caught.value.param == "messages[0].content"


# --------------------------------------------------------------------------- integers

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", INT32_MAX + 1),
        ("max_tokens", 5 * 10**15),
        ("max_tokens", 10**30),
        ("max_tokens", 0),
        ("max_completion_tokens", INT32_MAX + 1),
        ("max_completion_tokens", -1),
        ("n", 0),
        ("n", 129),
        ("n", 10**20),
        ("seed", INT64_MAX + 1),
        ("seed", -INT64_MAX - 2),
        ("top_logprobs", -1),
        ("top_logprobs", 21),
        ("temperature", 10**400),
    ],
)
def test_an_integer_out_of_range_is_400_naming_the_field(
    client: FlaskClient, api_key: str, field: str, value: int
) -> None:
    assert_invalid(chat(client, api_key, {**GOOD, field: value}), field)


@pytest.mark.parametrize("value", [101, -101, 2**64])
def test_a_logit_bias_out_of_range_is_400_naming_the_token(
    client: FlaskClient, api_key: str, value: int
) -> None:
    assert_invalid(
        chat(client, api_key, {**GOOD, "logit_bias": {"50256": value}}), "logit_bias.50256"
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": INT32_MAX},
        {"max_completion_tokens": INT32_MAX, "n": 128},
        {"seed": INT64_MAX},
        {"seed": -INT64_MAX - 1},
        {"top_logprobs": 20, "logprobs": True},
        {"logit_bias": {"1": -100, "2": 100}},
    ],
)
def test_the_widest_accepted_integers_are_served(
    client: FlaskClient, api_key: str, fields: dict[str, Any]
) -> None:
    response = chat(client, api_key, {**GOOD, **fields})
    assert response.status_code == 200, response.get_data(as_text=True)


def test_a_reservation_beyond_any_balance_is_400_not_an_overflow(
    make_router: Callable[..., Router],
) -> None:
    # Prices are not bounded in config: at $1,000 a token, 2**31 tokens x 128 choices is
    # far beyond a 64-bit count of nano-dollars, and beyond the most a balance holds.
    config = gateway_config()
    config["providers"][0]["models"][0]["completion_price"] = "1000"
    router = make_router(config)
    app = Flask("host-app")
    LLMRouter(app, router=router)
    key = router.create_key("rich")[1]
    body = {**GOOD, "max_completion_tokens": INT32_MAX, "n": 128}
    error = assert_invalid(chat(app.test_client(), key, body), "max_completion_tokens")
    assert "most a balance holds" in error["message"]
    # the key is untouched and still served
    assert chat(app.test_client(), key, {**GOOD, "max_tokens": 5}).status_code == 200


# --------------------------------------------------------------------------- broken bodies


@pytest.fixture
def server(app: Flask) -> Iterator[LoopbackServer]:
    with LoopbackServer(app) as server:
        yield server


def send_raw(server: LoopbackServer, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are, close our side, and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(payload)


def head(key: str, *lines: str) -> str:
    return (
        "POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\n"
        f"Authorization: Bearer {key}\nContent-Type: application/json\n"
        + "".join(line + "\n" for line in lines)
    )


GOOD_BYTES = json.dumps(GOOD).encode()


@pytest.mark.parametrize(
    ("lines", "body"),
    [
        pytest.param(
            ["Transfer-Encoding: chunked"], b"zz\r\nabc\r\n0\r\n\r\n", id="bad-chunk-size"
        ),
        pytest.param(
            ["Transfer-Encoding: chunked"], b"-5\r\nabc\r\n0\r\n\r\n", id="negative-chunk"
        ),
        pytest.param(
            ["Transfer-Encoding: chunked"], b"3\r\nabcXY0\r\n\r\n", id="chunk-without-terminator"
        ),
        pytest.param(["Transfer-Encoding: chunked"], b"ff\r\n" + GOOD_BYTES, id="chunk-cut-short"),
        pytest.param(["Transfer-Encoding: chunked"], b'5\r\n{"mo', id="chunked-ends-in-a-chunk"),
        pytest.param(["Transfer-Encoding: chunked"], b"", id="chunked-no-chunks"),
        pytest.param(
            [f"Content-Length: {len(GOOD_BYTES) + 50}"], GOOD_BYTES, id="shorter-than-length"
        ),
        pytest.param(["Content-Length: 5"], b"", id="empty-with-length"),
        pytest.param(["Content-Length: abc"], GOOD_BYTES, id="length-not-a-number"),
        pytest.param(["Content-Length: 1_0"], GOOD_BYTES, id="length-with-underscore"),
        pytest.param(["Content-Length: +5"], GOOD_BYTES, id="length-with-sign"),
        pytest.param(["Content-Length: -5"], GOOD_BYTES, id="negative-length"),
        pytest.param(
            [f"Content-Length: {len(GOOD_BYTES) + 2}"],
            GOOD_BYTES[:-2] + b"\xff\xfe}}",
            id="bad-utf8",
        ),
    ],
)
def test_a_broken_body_on_the_wire_is_400(
    server: LoopbackServer, api_key: str, lines: list[str], body: bytes
) -> None:
    status, payload = send_raw(server, head(api_key, *lines), body)
    assert status == 400, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_a_transfer_encoding_overrides_the_content_length(
    server: LoopbackServer, api_key: str
) -> None:
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD_BYTES), GOOD_BYTES)
    status, payload = send_raw(
        server, head(api_key, "Transfer-Encoding: chunked", "Content-Length: 5"), chunked
    )
    assert status == 200, payload


def test_the_server_answers_well_after_broken_bodies(server: LoopbackServer, api_key: str) -> None:
    send_raw(server, head(api_key, "Transfer-Encoding: chunked"), b"zz\r\n")
    body = json.dumps(GOOD).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, payload = send_raw(server, head(api_key, "Transfer-Encoding: chunked"), chunked)
    assert status == 200, payload
    assert payload["choices"][0]["message"]["content"] == "hi"


@pytest.mark.parametrize("key_id", ["%00", "key_%00x", "%ED%A0%80", "a" * 40, "key;drop"])
def test_a_key_id_that_cannot_be_one_is_a_400_naming_it(
    router: Router, client: FlaskClient, key_id: str
) -> None:
    _, admin = router.create_key("admin", admin=True)
    response = client.get(
        f"/v1/usage?key_id={key_id}", headers={"Authorization": f"Bearer {admin}"}
    )
    assert_invalid(response, "key_id")


@pytest.mark.parametrize("key_id", ["\x00", "key_\ud800", ""])
def test_key_operations_refuse_an_impossible_key_id(router: Router, key_id: str) -> None:
    for operation in (
        lambda: router.usage(key_id=key_id),
        lambda: router.revoke_key(key_id),
        lambda: router.top_up(key_id, "1"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            operation()
        assert caught.value.param == "key_id"
