"""Reservations: the upper estimate held from a balance before a paid call."""

from __future__ import annotations

from decimal import Decimal

from llmrouter.billing import Prices, reservation_nanos
from llmrouter.config import ModelSettings
from llmrouter.schemas import parse_chat_request

MODEL = ModelSettings(
    id="m", prompt_price=Decimal("0.000001"), completion_price=Decimal("0.000002"),
    max_output_length=100,
)  # fmt: skip


def reserve(**fields: object) -> int:
    body = {"model": "m", "messages": [{"role": "user", "content": "héllo"}], **fields}
    return reservation_nanos(parse_chat_request(body), MODEL)


def test_one_token_a_byte_plus_the_message_and_the_whole_output() -> None:
    # "héllo" is 6 UTF-8 bytes, plus 4 for the message; 100 output tokens (the model's cap)
    assert reserve() == Prices(Decimal("0.000001"), Decimal("0.000002")).cost_nanos(10, 100)
    assert reserve(max_tokens=10) == 10 * 1_000 + 10 * 2_000


def test_every_choice_is_reserved_for() -> None:
    assert reserve(max_tokens=10, n=3) == 10 * 1_000 + 3 * 10 * 2_000


def test_a_response_schema_counts_as_prompt() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert reserve(max_tokens=10, response_format=schema) > reserve(max_tokens=10)
