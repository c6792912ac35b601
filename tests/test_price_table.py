"""Models a connection does not list are priced from the bundled price table (genai-prices,
no network): a flat price is billed exactly as the table says per token; a model priced in
tiers, or unknown, is refused with a 400 naming 'model' and why — never guessed or free."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from genai_prices import Usage, calc_price

from flask_ext import LLMRouter
from llmrouter import InvalidRequestError, Router
from llmrouter.billing import Prices
from tests.conftest import UPSTREAM_KEY
from tests.upstreams.openai_server import FakeOpenAI

HI = [{"role": "user", "content": "What does a token cost?"}]
NANO = Decimal("0.000000001")
#: nothing listens here: a refused model must be refused before any call
NOWHERE = "http://127.0.0.1:9/v1"
GROQ = "https://api.groq.com/openai/v1"
LLAMA = "llama-3.3-70b-versatile"


@pytest.fixture
def router(make_router: Callable[..., Router]) -> Router:
    return make_router({"database_url": "sqlite://", "secret_key": "price-table-tests"})


def table_cost(prompt: int, completion: int, model: str, **where: Any) -> Decimal:
    """The table's own price of a usage, in USD."""
    usage = Usage(input_tokens=prompt, output_tokens=completion)
    return calc_price(usage, model, **where).total_price


def billed(router: Router, key_id: str) -> tuple[int, int, Decimal]:
    (row,) = router.usage(key_id=key_id)
    return row.prompt_tokens, row.completion_tokens, row.cost_nanos * NANO


def test_an_unlisted_flat_priced_model_is_billed_at_the_tables_price_per_token(
    router: Router, fake_openai: FakeOpenAI
) -> None:
    base_url = fake_openai.url + "/v1"  # type: ignore[attr-defined]
    router.connections.create(
        {"name": "Acme", "provider": "openai", "apiKey": UPSTREAM_KEY, "baseUrl": base_url}
        | {"model": "gpt-4o"}
    )
    target = router.catalog.resolve("Acme#gpt-4o")
    assert target.model.prompt_price > 0 and target.model.completion_price > 0
    for prompt, completion in ((1, 0), (0, 1), (1234, 567), (10**6, 10**6)):
        nanos = Prices.of(target.model).cost_nanos(prompt, completion)
        assert nanos * NANO == table_cost(prompt, completion, "gpt-4o", provider_id="openai")

    record, secret = router.create_key("billed", credits="1")
    router.chat(model="Acme#gpt-4o", messages=HI, api_key=secret)
    prompt, completion, cost = billed(router, record.id)
    assert prompt > 0 and completion > 0
    assert cost == table_cost(prompt, completion, "gpt-4o", provider_id="openai")

    # a model the connection does not name at all, asked for by Name#model
    other, secret = router.create_key("other", credits="1")
    router.chat(model="Acme#gpt-4o-mini", messages=HI, api_key=secret)
    prompt, completion, cost = billed(router, other.id)
    assert cost == table_cost(prompt, completion, "gpt-4o-mini", provider_id="openai")


@pytest.mark.parametrize(
    ("provider", "model", "reason"),
    [
        ("anthropic", "claude-sonnet-4-5", "in tiers by prompt size"),
        ("openai", "no-such-model-3000", "the price table does not know it"),
    ],
)
def test_a_tiered_or_unknown_model_is_refused_naming_model_and_why(
    router: Router, provider: str, model: str, reason: str
) -> None:
    fields = {"provider": provider, "apiKey": "sk-price-test-0123456789", "baseUrl": NOWHERE}
    with pytest.raises(InvalidRequestError) as refused:
        router.connections.create({"name": "Refused", "model": model, **fields})
    error = refused.value
    assert (error.status, error.param, error.code) == (400, "model", "model_price_unknown")
    assert model in error.message and reason in error.message
    assert router.connections.list() == []

    listed = [{"id": "listed", "prompt_price": "0.000001", "completion_price": "0.000002"}]
    router.connections.create({"name": "Listed", "model": "listed", "models": listed, **fields})
    secret = router.create_key("caller", credits="1")[1]
    with pytest.raises(InvalidRequestError) as refused:
        router.chat(model=f"Listed#{model}", messages=HI, api_key=secret)
    assert (refused.value.status, refused.value.param) == (400, "model")
    assert reason in refused.value.message
    assert router.usage() == []  # refused before admission: nothing billed or counted


def test_a_refused_price_over_http_is_seed_003s_envelope(router: Router) -> None:
    app = Flask("host")
    LLMRouter(app, router=router)
    admin = router.create_key("admin", admin=True)[1]
    answer = app.test_client().post(
        "/v1/llm-providers",
        json={"name": "Tiered", "provider": "anthropic", "apiKey": "sk-ant-price-test-0123"}
        | {"model": "claude-sonnet-4-5"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert answer.status_code == 400
    assert answer.json is not None and answer.json["success"] is False
    error = answer.json["error"]
    assert (error["code"], error["field"]) == ("model_price_unknown", "model")
    assert "tiers" in error["message"]


def test_a_custom_server_is_priced_by_its_base_url(router: Router) -> None:
    """No call is made: only the prices, from the bundled table."""
    router.connections.create(
        {"name": "Groq", "provider": "custom", "baseUrl": GROQ, "apiKey": "gsk_price_test_0123"}
        | {"model": LLAMA}
    )
    for model in (LLAMA, "llama-3.1-8b-instant"):
        target = router.catalog.resolve(f"Groq#{model}")
        for prompt, completion in ((1, 0), (0, 1), (4321, 765)):
            nanos = Prices.of(target.model).cost_nanos(prompt, completion)
            assert nanos * NANO == table_cost(prompt, completion, model, provider_api_url=GROQ)
    pricing = router.model(f"Groq#{LLAMA}").pricing  # as /v1/models shows it
    assert Decimal(pricing.prompt) == table_cost(1, 0, LLAMA, provider_api_url=GROQ)
    assert Decimal(pricing.completion) == table_cost(0, 1, LLAMA, provider_api_url=GROQ)

    # the same model at a server the table does not know has no price
    with pytest.raises(InvalidRequestError) as refused:
        router.connections.create(
            {"name": "Elsewhere", "provider": "custom", "baseUrl": NOWHERE, "model": LLAMA}
        )
    assert refused.value.param == "model" and "does not know" in refused.value.message
