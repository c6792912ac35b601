"""Registering host functions as tools: the schema and description a model sees, the
arguments it may send, and the names, functions and decorator forms that are refused."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from llmrouter import RegisteredTool, Router, ToolRegistry

ECHO = {
    "database_url": "sqlite://",
    "providers": [{"name": "echo", "kind": "echo", "allow_unlisted_models": True}],
}


@pytest.fixture
def router() -> Iterator[Router]:
    built = Router.from_config(ECHO)
    yield built
    built.close()


def parameters_of(func: Any) -> dict[str, Any]:
    return ToolRegistry().register(func).parameters


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Line(BaseModel):
    sku: str
    quantity: int = 1


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize(
    ("annotation", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Literal["asc", "desc"], {"enum": ["asc", "desc"], "type": "string"}),
        (Unit, {"enum": ["celsius", "fahrenheit"], "type": "string"}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
    ],
    ids=["str", "int", "float", "bool", "literal", "enum", "list"],
)
def test_each_supported_type_has_its_json_schema(annotation: Any, schema: dict[str, Any]) -> None:
    def lookup(value: Any) -> str:
        return "ok"

    lookup.__annotations__ = {"value": annotation, "return": str}
    assert parameters_of(lookup) == {
        "type": "object",
        "properties": {"value": schema},
        "required": ["value"],
        "additionalProperties": False,
    }


def test_defaulted_and_optional_parameters_are_not_required() -> None:
    def search(query: str, limit: int = 10, region: str | None = None) -> str:
        return query

    assert parameters_of(search) == {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer", "default": 10},
            "region": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def test_a_nested_model_is_inlined_without_titles() -> None:
    def order(lines: list[Line], title: str) -> str:
        return "ok"

    assert parameters_of(order) == {
        "type": "object",
        "properties": {
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer", "default": 1},
                    },
                    "required": ["sku"],
                },
            },
            # a parameter called "title" is a property, not pydantic's title noise
            "title": {"type": "string"},
        },
        "required": ["lines", "title"],
        "additionalProperties": False,
    }


def test_a_function_without_parameters_has_an_empty_object_schema() -> None:
    def now() -> str:
        return "noon"

    assert parameters_of(now) == {
        "type": "object",
        "properties": {},
        "required": [],
        "additionalProperties": False,
    }


# ------------------------------------------------------------------ descriptions


def price_of(
    sku: str,
    currency: Annotated[str, Field(description="ISO 4217 code, e.g. EUR")] = "USD",
    rounded: bool = False,
) -> str:
    """Look up the current price of a product.

    Prices come from the shop's own table, refreshed hourly.

    Args:
        sku (str): the product's stock-keeping unit,
            as printed on its label.
        currency: ignored here: the Annotated description wins.
        rounded: round to whole units.

    Returns:
        The price as text.
    """
    return f"{sku}: 1 {currency}"


def test_the_description_is_the_docstrings_first_paragraph() -> None:
    assert ToolRegistry().register(price_of).description == (
        "Look up the current price of a product."
    )


def test_parameter_descriptions_come_from_annotated_then_the_args_section() -> None:
    properties = parameters_of(price_of)["properties"]
    assert properties == {
        "sku": {
            "type": "string",
            "description": "the product's stock-keeping unit, as printed on its label.",
        },
        "currency": {"type": "string", "default": "USD", "description": "ISO 4217 code, e.g. EUR"},
        "rounded": {"type": "boolean", "default": False, "description": "round to whole units."},
    }


def test_explicit_name_and_description_win_and_definitions_are_openai_tools() -> None:
    registry = ToolRegistry()
    registry.register(price_of, name="price", description="Prices.", timeout=2.5)
    registry.register(price_of)
    assert registry.names() == ["price", "price_of"]
    first = registry.definitions()[0]
    assert first == {
        "type": "function",
        "function": {
            "name": "price",
            "description": "Prices.",
            "parameters": parameters_of(price_of),
        },
    }
    tool = registry.get("price")
    assert tool is not None and tool.timeout == 2.5
    assert registry.get("price_of").timeout is None  # type: ignore[union-attr]
    assert registry.get("nothing") is None


# ------------------------------------------------------------------ calling


def total(lines: list[Line], unit: Unit = Unit.CELSIUS, note: str | None = None) -> dict[str, Any]:
    return {
        "count": sum(line.quantity for line in lines),
        "first": lines[0],
        "unit": unit.value,
        "note": note,
    }


def test_valid_arguments_reach_the_function_as_its_types_and_the_result_is_json() -> None:
    tool = ToolRegistry().register(total)
    result = tool.call(
        '{"lines": [{"sku": "A", "quantity": 2}, {"sku": "B"}], "unit": "fahrenheit"}'
    )
    assert json.loads(result) == {
        "count": 3,
        "first": {"sku": "A", "quantity": 2},
        "unit": "fahrenheit",
        "note": None,
    }


def test_a_string_result_is_returned_as_it_is_and_empty_arguments_are_an_empty_object() -> None:
    def hello() -> str:
        return "hi there"

    assert ToolRegistry().register(hello).call("") == "hi there"
    assert ToolRegistry().register(hello).call("{}") == "hi there"


@pytest.mark.parametrize(
    ("arguments", "problems"),
    [
        ('{"lines": "many"}', ["- lines: Input should be a valid array"]),
        (
            '{"lines": [{"quantity": "two"}]}',
            [
                "- lines.0.sku: required argument missing",
                "- lines.0.quantity: Input should be a valid integer",
            ],
        ),
        ("{}", ["- lines: required argument missing"]),
        ('{"lines": [], "colour": "red"}', ["- colour: unknown argument"]),
        ('{"lines": [], "unit": "kelvin"}', ["- unit: Input should be 'celsius' or 'fahrenheit'"]),
        ('{"lines": [', ["- the arguments are not valid JSON"]),
        ("[1, 2]", ["- the arguments must be a JSON object"]),
    ],
    ids=["wrong-type", "nested", "missing", "extra", "enum", "not-json", "not-an-object"],
)
def test_bad_arguments_become_a_result_naming_the_problem(
    arguments: str, problems: list[str]
) -> None:
    ran: list[object] = []

    def record(lines: list[Line], unit: Unit = Unit.CELSIUS) -> str:
        ran.append(lines)
        return "ran"

    result = ToolRegistry().register(record).call(arguments)
    assert result.startswith("Error: invalid arguments for tool 'record'; nothing was run.\n")
    for problem in problems:
        assert any(line.startswith(problem) for line in result.splitlines()), result
    assert "Traceback" not in result and "pydantic" not in result
    assert ran == []


def test_what_the_function_raises_propagates_for_the_loop_to_handle() -> None:
    def broken(sku: str) -> str:
        raise LookupError(f"no such sku: {sku}")

    with pytest.raises(LookupError, match="no such sku: X"):
        ToolRegistry().register(broken).call('{"sku": "X"}')


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "dotted.name", "ünïcode"])
def test_names_openai_refuses_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        ToolRegistry().register(price_of, name=name)


def test_the_longest_name_openai_allows_is_allowed() -> None:
    assert ToolRegistry().register(price_of, name="a-" + "b" * 62).name == "a-" + "b" * 62


def test_a_duplicate_name_is_refused_naming_it() -> None:
    registry = ToolRegistry()
    registry.register(price_of)
    with pytest.raises(ValueError, match="'price_of' is already registered"):
        registry.register(total, name="price_of")
    assert registry.get("price_of").func is price_of  # type: ignore[union-attr]


def test_an_async_function_is_refused() -> None:
    async def fetch(url: str) -> str:
        return url

    with pytest.raises(TypeError, match="only sync functions"):
        ToolRegistry().register(fetch)


def variadic(*names: str) -> str:
    return ""


def keywords(**options: str) -> str:
    return ""


def positional(sku: str, /) -> str:
    return sku


def unannotated(sku, count: int) -> str:  # type: ignore[no-untyped-def]
    return sku  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (variadic, "parameter 'names': \\*args and \\*\\*kwargs"),
        (keywords, "parameter 'options': \\*args and \\*\\*kwargs"),
        (positional, "parameter 'sku': positional-only"),
        (unannotated, "parameter 'sku' has no type hint"),
    ],
    ids=["args", "kwargs", "positional-only", "no-hint"],
)
def test_parameters_a_model_cannot_fill_are_refused_naming_them(func: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        ToolRegistry().register(func)


class Opaque:
    pass


def test_a_type_without_a_json_schema_is_refused() -> None:
    def use(thing: Opaque) -> str:
        return ""

    with pytest.raises(TypeError, match="no JSON schema"):
        ToolRegistry().register(use)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), True, "5"])
def test_a_timeout_must_be_positive_seconds(timeout: Any) -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        ToolRegistry().register(price_of, timeout=timeout)


# ------------------------------------------------------------------ on the Router


def test_the_bare_decorator_registers_and_returns_the_function(router: Router) -> None:
    @router.tool
    def stock(sku: str) -> int:
        """How many are in stock."""
        return 7

    assert stock("A") == 7  # still the plain function
    assert router.tools.names() == ["stock"]
    assert router.tools.definitions()[0]["function"]["description"] == "How many are in stock."
    assert router.tools.get("stock").call('{"sku": "A"}') == "7"  # type: ignore[union-attr]


def test_the_decorator_with_arguments_and_add_tool(router: Router) -> None:
    @router.tool(name="inventory", description="Units on hand.", timeout=3)
    def stock(sku: str) -> int:
        return 7

    def price(sku: str) -> str:
        return "1 USD"

    added = router.add_tool(price, timeout=1.5)
    assert stock("A") == 7
    assert isinstance(added, RegisteredTool) and added is router.tools.get("price")
    assert router.tools.names() == ["inventory", "price"]
    inventory = router.tools.get("inventory")
    assert inventory is not None
    assert (inventory.description, inventory.timeout) == ("Units on hand.", 3.0)
    assert added.timeout == 1.5
    with pytest.raises(ValueError, match="'price' is already registered"):
        router.add_tool(price)
