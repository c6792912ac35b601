"""Prices of models a provider connection does not list, from a maintained price table
(pydantic's ``genai-prices``, its snapshot bundled with the installed version: no network).

Only flat per-token prices are taken. A model the table does not know, or prices in tiers
(a higher price past some prompt size) or by date, is refused with a 400 naming it: the
router bills with one price per token, so such a model must be listed with the prices to
bill — never guessed, and never free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from .errors import InvalidRequestError

#: a provider kind's id in the price table (custom servers are found by their base URL)
_TABLE_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "mistral": "mistral",
}
_PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class TablePrice:
    """USD per token, as ``[[providers.models]]`` writes them."""

    prompt_price: Decimal
    completion_price: Decimal


class PriceUnknownError(InvalidRequestError):
    """No price to bill a model with; names the model and what to do."""

    code = "model_price_unknown"


def table_price(kind: str, model_id: str, base_url: str | None = None) -> TablePrice:
    """The table's price of ``model_id`` at a provider of ``kind`` (``base_url``: where a
    custom server is, by which the table may know its provider)."""
    price = _lookup(_TABLE_PROVIDER.get(kind), model_id, base_url)
    if isinstance(price, str):
        raise PriceUnknownError(
            f"No price is known for the model '{model_id}': {price}. List it in the "
            "connection's models with prompt_price and completion_price.",
            param="model",
        )
    return price


@functools.lru_cache(maxsize=1024)
def _lookup(provider_id: str | None, model_id: str, base_url: str | None) -> TablePrice | str:
    """The price, or why there is none (cached: both are answers)."""
    from genai_prices import data_snapshot  # loaded on the first unlisted model only

    snapshot = data_snapshot.get_snapshot()
    try:
        _, model = snapshot.find_provider_model(model_id, None, provider_id, base_url)
    except LookupError:
        return "the price table does not know it"
    prices = model.get_prices(datetime.now(UTC))
    prompt, completion = prices.input_mtok, prices.output_mtok
    if hasattr(prompt, "tiers") or hasattr(completion, "tiers"):
        return "the price table prices it in tiers by prompt size"
    if not isinstance(prompt, Decimal) or not isinstance(completion, Decimal):
        return "the price table has no input and output price per token for it"
    return TablePrice(prompt / _PER_MILLION, completion / _PER_MILLION)
