"""Which requests are offered which built-in tools: the config's ``[tools] enabled``, a
model's ``tools`` flag, a key's ``allowed_tools`` and a request's ``"llmrouter":
{"builtin_tools": ...}``; what is refused (and how the 400 says why); and the tools
``GET /v1/provider`` lists."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import requests
from flask import Flask
from pydantic import Field

from flask_ext import LLMRouter
from llmrouter import ConfigError, InvalidRequestError, KeyRecord, ModelSettings, Router
from llmrouter.config import ToolSettings, load_settings
from llmrouter.schemas import parse_chat_request
from llmrouter.tool_selection import offered_tools
from llmrouter.tools import ToolRegistry
from tests.conftest import gateway_config
from tests.upstreams.loopback import LoopbackServer


def price(sku: str) -> str:
    """The price of one product, in USD."""
    return "9.99"


def stock(sku: str, warehouse: Literal["north", "south"] = "north") -> int:
    """Units of a product in stock.

    Args:
        warehouse: where to count
    """
    return 3


def forecast(city: Annotated[str, Field(description="a city name")]) -> str:
    """Tomorrow's weather."""
    return "sunny"


def registry_of(*funcs: Callable[..., Any]) -> ToolRegistry:
    registry = ToolRegistry()
    for func in funcs:
        registry.register(func)
    return registry


REGISTRY = registry_of(price, stock, forecast)
EVERY = ToolSettings()
MODEL = ModelSettings(id="gpt-4o-mini")
NO_TOOLS_MODEL = ModelSettings(id="plain", tools=False)
KEY = KeyRecord(
    id="key-1",
    name="test",
    hint="sk-…abcd",
    is_admin=False,
    created_at=0,
    revoked_at=None,
    balance_nanos=0,
    spent_nanos=0,
    daily_requests=None,
    throttle_seconds=None,
    requests_per_minute=None,
)
HELLO = [{"role": "user", "content": "hello"}]


def client_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def offered(
    *,
    registry: ToolRegistry = REGISTRY,
    settings: ToolSettings = EVERY,
    model: ModelSettings = MODEL,
    key: KeyRecord = KEY,
    **body: Any,
) -> list[str]:
    """The names ``offered_tools`` returns for a chat body with ``body``'s fields."""
    request = parse_chat_request({"model": "m", "messages": HELLO, **body})
    return [tool.name for tool in offered_tools(registry, settings, model, key, request)]


def refusal(**kwargs: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        offered(**kwargs)
    assert caught.value.status == 400
    return caught.value


def allowed(*names: str) -> KeyRecord:
    return dataclasses.replace(KEY, allowed_tools=names)


# ------------------------------------------------------------------ the filters


def test_with_nothing_restricting_every_tool_is_offered_in_registration_order() -> None:
    assert offered() == ["price", "stock", "forecast"]


def test_the_offered_tools_are_the_registered_ones_themselves() -> None:
    request = parse_chat_request({"model": "m", "messages": HELLO})
    tools = offered_tools(REGISTRY, EVERY, MODEL, KEY, request)
    assert tools == [REGISTRY.get("price"), REGISTRY.get("stock"), REGISTRY.get("forecast")]


@pytest.mark.parametrize(
    ("enabled", "names"),
    [
        (["forecast", "price"], ["price", "forecast"]),  # registry order, not the config's
        (["stock", "not_written_yet"], ["stock"]),  # not registered: simply not offered
        ([], []),
    ],
)
def test_config_enabled_filters(enabled: list[str], names: list[str]) -> None:
    assert offered(settings=ToolSettings(enabled=enabled)) == names


def test_a_model_with_tools_false_is_offered_none() -> None:
    assert offered(model=NO_TOOLS_MODEL) == []
    assert offered(model=NO_TOOLS_MODEL, llmrouter={"builtin_tools": True}) == []


@pytest.mark.parametrize(
    ("allowed_tools", "names"),
    [
        (None, ["price", "stock", "forecast"]),
        (("forecast", "stock"), ["stock", "forecast"]),
        (("Price", "stock "), []),  # names compare exactly
        ((), []),
    ],
)
def test_key_allowed_tools_filters(allowed_tools: tuple[str, ...] | None, names: list[str]) -> None:
    key = dataclasses.replace(KEY, allowed_tools=allowed_tools)
    assert offered(key=key) == names


def test_config_and_key_filters_combine() -> None:
    settings = ToolSettings(enabled=["price", "stock"])
    assert offered(settings=settings, key=allowed("stock", "forecast")) == ["stock"]
    assert offered(settings=settings, key=allowed("forecast")) == []


@pytest.mark.parametrize(
    ("builtin_tools", "names"),
    [
        (True, ["price", "stock", "forecast"]),
        (False, []),
        ([], []),
        (["forecast", "price"], ["price", "forecast"]),  # registry order
        (["stock", "stock"], ["stock"]),
    ],
)
def test_the_request_chooses_among_what_remains(
    builtin_tools: bool | list[str], names: list[str]
) -> None:
    assert offered(llmrouter={"builtin_tools": builtin_tools}) == names


def test_the_request_narrows_what_the_config_and_key_left() -> None:
    settings = ToolSettings(enabled=["price", "stock"])
    key = allowed("stock", "price")
    assert offered(settings=settings, key=key, llmrouter={"builtin_tools": ["stock"]}) == ["stock"]
    assert offered(settings=settings, key=key, llmrouter={"builtin_tools": True}) == [
        "price",
        "stock",
    ]


def test_other_router_options_leave_the_tools_alone() -> None:
    assert offered(llmrouter={"tool_progress": True}) == ["price", "stock", "forecast"]


# ------------------------------------------------------------------ asking for what is not there


@pytest.mark.parametrize(
    ("name", "setup", "why"),
    [
        ("lookup", {}, "no tool of that name is registered"),
        (
            "forecast",
            {"settings": ToolSettings(enabled=["price", "forecast_v2"])},
            "not enabled in the config ([tools] enabled)",
        ),
        (
            "price",
            {"model": NO_TOOLS_MODEL},
            "the model 'plain' is not offered built-in tools (tools = false)",
        ),
        ("price", {"key": allowed("stock")}, "this API key is not allowed it"),
        ("price", {"key": allowed()}, "this API key is not allowed it"),
        ("price", {"key": allowed("PRICE")}, "this API key is not allowed it"),
    ],
    ids=[
        "not-registered",
        "not-enabled",
        "not-for-this-model",
        "not-for-this-key",
        "key-none",
        "case",
    ],
)
def test_a_listed_tool_that_is_not_available_is_a_400_saying_why(
    name: str, setup: dict[str, Any], why: str
) -> None:
    error = refusal(**setup, llmrouter={"builtin_tools": [name]})
    assert f"'{name}'" in error.message and why in error.message
    assert error.param == "llmrouter.builtin_tools"
    assert error.code == "builtin_tool_unavailable"
    assert error.to_dict()["error"]["type"] == "invalid_request_error"


def test_the_first_filter_that_stops_a_tool_is_the_reason_given() -> None:
    error = refusal(
        settings=ToolSettings(enabled=["stock"]),
        model=NO_TOOLS_MODEL,
        key=allowed(),
        llmrouter={"builtin_tools": ["price"]},
    )
    assert "not enabled in the config" in error.message


def test_one_unavailable_name_among_available_ones_is_refused_and_named() -> None:
    error = refusal(
        key=allowed("price", "stock"), llmrouter={"builtin_tools": ["price", "forecast"]}
    )
    assert "'forecast'" in error.message and "'price'" not in error.message


# ------------------------------------------------------------------ n, tool_choice


@pytest.mark.parametrize("builtin_tools", [None, True])
def test_a_request_for_several_choices_is_offered_none(builtin_tools: bool | None) -> None:
    assert offered(n=2, llmrouter={"builtin_tools": builtin_tools}) == []
    assert offered(n=1, llmrouter={"builtin_tools": builtin_tools}) == [
        "price",
        "stock",
        "forecast",
    ]


def test_listing_tools_with_several_choices_is_a_400_naming_n() -> None:
    error = refusal(n=3, llmrouter={"builtin_tools": ["price"]})
    assert "n=3" in error.message and "llmrouter.builtin_tools" in error.message
    assert error.param == "n"
    assert error.code == "builtin_tools_need_one_choice"
    assert offered(n=3, llmrouter={"builtin_tools": []}) == []
    assert offered(n=3, llmrouter={"builtin_tools": False}) == []


def test_tool_choice_none_is_offered_none() -> None:
    tools = [client_tool("get_time")]
    assert offered(tools=tools, tool_choice="none") == []
    assert offered(tools=tools, tool_choice="none", llmrouter={"builtin_tools": ["price"]}) == []
    assert offered(tools=tools, tool_choice="auto") == ["price", "stock", "forecast"]
    assert offered(tools=tools, tool_choice="required") == ["price", "stock", "forecast"]
    named = {"type": "function", "function": {"name": "get_time"}}
    assert offered(tools=tools, tool_choice=named) == ["price", "stock", "forecast"]


# ------------------------------------------------------------------ name clashes


def test_a_client_tool_named_like_an_offered_builtin_one_is_a_400() -> None:
    error = refusal(tools=[client_tool("get_time"), client_tool("stock")])
    assert "'stock'" in error.message and "built-in" in error.message
    assert error.param == "tools"
    assert error.code == "tool_name_clash"


def test_a_clash_is_refused_however_the_tool_came_to_be_offered() -> None:
    error = refusal(tools=[client_tool("stock")], llmrouter={"builtin_tools": ["stock"]})
    assert error.code == "tool_name_clash"


@pytest.mark.parametrize(
    "setup",
    [
        {"llmrouter": {"builtin_tools": False}},
        {"llmrouter": {"builtin_tools": ["price"]}},
        {"settings": ToolSettings(enabled=["price"])},
        {"model": NO_TOOLS_MODEL},
        {"key": allowed("price", "forecast")},
        {"n": 2},
        {"tool_choice": "none"},
    ],
    ids=["request-false", "request-list", "config", "model", "key", "n", "tool-choice-none"],
)
def test_a_builtin_tool_not_offered_does_not_clash(setup: dict[str, Any]) -> None:
    names = offered(tools=[client_tool("stock")], **setup)
    assert "stock" not in names


def test_names_differing_in_case_do_not_clash() -> None:
    assert offered(tools=[client_tool("Stock")]) == ["price", "stock", "forecast"]


# ------------------------------------------------------------------ no tools registered


def test_with_no_tool_registered_a_plain_request_looks_at_nothing_else() -> None:
    request = parse_chat_request({"model": "m", "messages": HELLO, "tools": [client_tool("x")]})
    untouchable: Any = object()  # any attribute read of settings, model or key would raise
    assert offered_tools(ToolRegistry(), untouchable, untouchable, untouchable, request) == []


def test_with_no_tool_registered_asking_for_one_by_name_is_still_refused() -> None:
    error = refusal(registry=ToolRegistry(), llmrouter={"builtin_tools": ["price"]})
    assert "'price'" in error.message and "no tool of that name is registered" in error.message
    assert offered(registry=ToolRegistry(), llmrouter={"builtin_tools": True}) == []


# ------------------------------------------------------------------ config


TOOLS_TOML = """
database_url = "sqlite://"

[tools]
enabled = ["price", "stock"]
max_tool_rounds = 3
timeout_seconds = 2.5

[[providers]]
name = "echo"
kind = "echo"

[[providers.models]]
id = "echo"

[[providers.models]]
id = "plain"
tools = false
"""


def test_tools_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "llmrouter.toml"
    path.write_text(TOOLS_TOML)
    settings = load_settings(path)
    assert settings.tools == ToolSettings(
        enabled=["price", "stock"], max_tool_rounds=3, timeout_seconds=2.5
    )
    assert [m.tools for m in settings.providers[0].models] == [True, False]


def test_tools_load_from_a_dict_and_default_to_every_registered_tool() -> None:
    settings = load_settings({"tools": {"enabled": ["forecast"], "max_tool_rounds": 2}})
    assert settings.tools.enabled == ["forecast"] and settings.tools.max_tool_rounds == 2
    defaults = load_settings({}).tools
    assert defaults.enabled is None and defaults.max_tool_rounds == 8
    assert defaults.timeout_seconds == 30.0


@pytest.mark.parametrize(
    ("tools", "key", "words"),
    [
        ({"enabled": ["price", "get price"]}, "tools.enabled", "'get price' is not a tool name"),
        ({"enabled": ["x" * 65]}, "tools.enabled", "is not a tool name"),
        ({"enabled": [""]}, "tools.enabled", "is not a tool name"),
        ({"enabled": ["get.price"]}, "tools.enabled", "is not a tool name"),
        ({"enabled": "price"}, "tools.enabled", "valid list"),
        ({"max_tool_rounds": 0}, "tools.max_tool_rounds", "greater than or equal to 1"),
        ({"timeout_seconds": 0}, "tools.timeout_seconds", "greater than 0"),
        ({"enable": ["price"]}, "tools.enable", "Extra inputs"),
    ],
)
def test_a_bad_tools_table_names_the_key(tools: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"tools": tools})
    assert caught.value.key == key
    assert words in caught.value.message and "<dict>" in caught.value.message


def test_a_bad_tool_name_in_a_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "llmrouter.toml"
    path.write_text(TOOLS_TOML.replace('"stock"]', '"stock price"]'))
    with pytest.raises(ConfigError) as caught:
        Router.from_config(path)
    assert str(path) in caught.value.message and "tools.enabled" in caught.value.message
    assert "'stock price'" in caught.value.message


# ------------------------------------------------------------------ over HTTP


@contextmanager
def served(router: Router) -> Iterator[str]:
    app = Flask("host-app")
    LLMRouter(app, router=router)
    with LoopbackServer(app) as server:
        yield server.url


@pytest.fixture
def tool_router(make_router: Callable[..., Router]) -> Router:
    router = make_router(gateway_config(tools={"enabled": ["stock", "price", "unwritten"]}))
    router.tool(price)
    router.tool(stock)
    router.add_tool(forecast)  # registered, not enabled
    return router


def test_provider_lists_the_enabled_builtin_tools_with_their_schemas(tool_router: Router) -> None:
    with served(tool_router) as url:
        info = requests.get(url + "/v1/provider", timeout=5).json()
    assert info["capabilities"]["builtin_tools"] is True
    assert info["builtin_tools"] == [
        {
            "name": "price",
            "description": "The price of one product, in USD.",
            "parameters": {
                "type": "object",
                "properties": {"sku": {"type": "string"}},
                "required": ["sku"],
                "additionalProperties": False,
            },
        },
        {
            "name": "stock",
            "description": "Units of a product in stock.",
            "parameters": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "warehouse": {
                        "default": "north",
                        "description": "where to count",
                        "enum": ["north", "south"],
                        "type": "string",
                    },
                },
                "required": ["sku"],
                "additionalProperties": False,
            },
        },
    ]


def test_provider_without_builtin_tools_says_so(make_router: Callable[..., Router]) -> None:
    router = make_router(gateway_config())
    with served(router) as url:
        info = requests.get(url + "/v1/provider", timeout=5).json()
    assert info["builtin_tools"] == [] and info["capabilities"]["builtin_tools"] is False
    # a router whose config enables none of its tools has none to show either
    disabled = make_router(gateway_config(tools={"enabled": []}))
    disabled.tool(price)
    with served(disabled) as url:
        info = requests.get(url + "/v1/provider", timeout=5).json()
    assert info["builtin_tools"] == [] and info["capabilities"]["builtin_tools"] is False


@pytest.mark.parametrize(
    ("body", "param", "code", "words"),
    [
        (
            {"llmrouter": {"builtin_tools": ["unwritten"]}},
            "llmrouter.builtin_tools",
            "builtin_tool_unavailable",
            "'unwritten' in 'llmrouter.builtin_tools' is not available: no tool of that name",
        ),
        (
            {"llmrouter": {"builtin_tools": ["forecast"]}},
            "llmrouter.builtin_tools",
            "builtin_tool_unavailable",
            "'forecast' in 'llmrouter.builtin_tools' is not available: it is not enabled",
        ),
        (
            {"tools": [client_tool("price")]},
            "tools",
            "tool_name_clash",
            "The tool 'price' in 'tools' has the name of one of this router's built-in tools",
        ),
        (
            {"n": 2, "llmrouter": {"builtin_tools": ["price"]}},
            "n",
            "builtin_tools_need_one_choice",
            "n=2",
        ),
    ],
    ids=["not-registered", "not-enabled", "clash", "n"],
)
def test_chat_refusals_over_http(
    tool_router: Router, body: dict[str, Any], param: str, code: str, words: str
) -> None:
    key = tool_router.create_key("test")[1]
    with served(tool_router) as url:
        response = requests.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "echo", "messages": HELLO, **body},
            timeout=5,
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    )
    assert words in error["message"]


def test_a_client_tool_named_like_a_builtin_one_is_served_when_builtins_are_left_out(
    tool_router: Router,
) -> None:
    key = tool_router.create_key("test")[1]
    with served(tool_router) as url:
        response = requests.post(
            url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "echo",
                "messages": HELLO,
                "tools": [client_tool("price")],
                "llmrouter": {"builtin_tools": False},
            },
            timeout=5,
        )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
