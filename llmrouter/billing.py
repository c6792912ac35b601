"""Money: exact amounts in integer nano-dollars, call costs, and credit reservations.

One nano-dollar is 10⁻⁹ USD. Amounts are ``int`` in Python and BIGINT in every database;
they become decimal strings only at the edges (config prices, JSON, the CLI).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from .config import ModelSettings
from .errors import InvalidRequestError
from .schemas import ChatCompletion, ChatRequest, ImagePart, TextPart, Usage

NANOS_PER_USD = 10**9
#: a billion dollars: the most one balance holds, far from where BIGINT overflows
MAX_BALANCE_NANOS = 10**18
_NANO = Decimal(1) / NANOS_PER_USD

#: tokens set aside for each image when estimating a prompt (providers bill ~85–1,600)
IMAGE_TOKEN_ALLOWANCE = 2_000
#: tokens set aside for each message's role markers
MESSAGE_TOKEN_ALLOWANCE = 4
#: the output assumed for a reservation when neither the request nor the model caps it
DEFAULT_OUTPUT_ALLOWANCE = 4_096
#: characters per token when a provider reports no usage (OpenAI's rule of thumb)
CHARS_PER_TOKEN = 4


#: digits an amount may have (a balance is at most $1e9 with 9 decimals: 19 digits)
MAX_AMOUNT_DIGITS = 40


def usd_to_nanos(amount: Decimal | str | int, *, field: str = "amount") -> int:
    """An exact USD amount as nano-dollars; more than 9 decimals is an error, not a rounding."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise InvalidRequestError(
            f"{field} '{amount}' is not a decimal number", param=field
        ) from None
    if not value.is_finite():
        raise InvalidRequestError(f"{field} must be a finite number", param=field)
    # Integer arithmetic on the digits: Decimal operations round at 28 digits, which
    # would let an amount finer than a nano-dollar through as if it were whole.
    sign, digits, exponent = value.as_tuple()
    # Bounded before any arithmetic: "1e8000000" would otherwise build a number of
    # megabytes (seconds of CPU with the GIL held), and 4,300+ digits fail int() itself.
    if len(digits) > MAX_AMOUNT_DIGITS or not -MAX_AMOUNT_DIGITS <= int(exponent) <= 18:
        raise InvalidRequestError(
            f"{field} is not an amount of USD this router can hold", param=field
        )
    shift = int(exponent) + 9
    number = int("".join(map(str, digits)) or "0")
    if shift < 0 and number % 10**-shift:
        raise InvalidRequestError(f"{field} '{amount}' is finer than a nano-dollar", param=field)
    nanos = (number * 10**shift if shift >= 0 else number // 10**-shift) * (-1 if sign else 1)
    if abs(nanos) > MAX_BALANCE_NANOS:
        raise InvalidRequestError(
            f"{field} is more than ${nanos_to_usd(MAX_BALANCE_NANOS)}", param=field
        )
    return nanos


def nanos_to_usd(nanos: int) -> str:
    """``1234`` -> ``"0.000001234"``: a decimal string with no exponent and no trailing zeros."""
    return format(Decimal(nanos).scaleb(-9).normalize(), "f")


def price_string(price: Decimal) -> str:
    """A per-token price for ``/v1/models`` (``Decimal("6E-7")`` -> ``"0.0000006"``)."""
    return format(price.normalize(), "f") if price else "0"


@dataclass(frozen=True)
class Prices:
    """USD per token, exact."""

    prompt: Decimal
    completion: Decimal

    @classmethod
    def of(cls, model: ModelSettings) -> Prices:
        return cls(model.prompt_price, model.completion_price)

    def cost_nanos(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The exact cost, rounded up to the next whole nano-dollar (at most 1 per call)."""
        exact = prompt_tokens * self.prompt + completion_tokens * self.completion
        return int((exact / _NANO).to_integral_value(rounding=ROUND_CEILING))


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """An upper bound of the prompt's tokens: one per UTF-8 byte of text (no tokenizer
    produces more tokens than bytes), plus fixed allowances for images and message markers."""
    total = 0
    for message in request.messages:
        total += MESSAGE_TOKEN_ALLOWANCE
        if isinstance(message.content, str):
            total += len(message.content.encode())
        elif message.content is not None:
            for part in message.content:
                if isinstance(part, TextPart):
                    total += len(part.text.encode())
                elif isinstance(part, ImagePart):
                    total += IMAGE_TOKEN_ALLOWANCE
                else:
                    total += len(json.dumps(part.model_dump()).encode())
        for call in message.tool_calls or []:
            total += len(call.function.name.encode()) + len(call.function.arguments.encode())
    if request.tools:
        total += len(json.dumps([t.model_dump(exclude_none=True) for t in request.tools]).encode())
    if request.response_format is not None:  # some providers send the schema as a prompt
        total += len(request.response_format.model_dump_json(exclude_none=True).encode())
    return total


def reservation_nanos(request: ChatRequest, model: ModelSettings) -> int:
    """What to hold from a balance before dispatch: an upper estimate of the call's cost."""
    prompt = estimate_prompt_tokens(request)
    if model.context_length:
        prompt = min(prompt, model.context_length)
    output = request.output_limit or model.max_output_length or DEFAULT_OUTPUT_ALLOWANCE
    reserve = Prices.of(model).cost_nanos(prompt, output * (request.n or 1))
    if reserve > MAX_BALANCE_NANOS:
        # No balance could cover it, and the columns it is compared with are 64-bit: a
        # request this costly (prices are unbounded in config) is refused as it stands.
        param = (
            "max_completion_tokens"
            if request.max_completion_tokens
            else "max_tokens"
            if request.max_tokens
            else None
        )
        lower = f"lower '{param}'" if param else "set 'max_completion_tokens'"
        raise InvalidRequestError(
            f"This request could cost more than ${nanos_to_usd(MAX_BALANCE_NANOS)}, the most "
            f"a balance holds: {lower}.",
            param=param,
        )
    return reserve


def estimate_tokens_from_text(characters: int) -> int:
    """Tokens for text whose usage the provider did not report: 4 characters a token."""
    return math.ceil(characters / CHARS_PER_TOKEN)


def usage_or_estimate(request: ChatRequest, completion: ChatCompletion) -> tuple[Usage, bool]:
    """The completion's reported usage, or an estimate (and ``True``) when it has none."""
    if completion.usage is not None:
        return completion.usage, False
    characters = sum(
        len(c.message.content or "")
        + sum(len(t.function.name) + len(t.function.arguments) for t in c.message.tool_calls or [])
        for c in completion.choices
    )
    return estimate_usage(request, characters), True


def estimate_usage(request: ChatRequest, completion_characters: int) -> Usage:
    """Usage a provider did not report: 4 characters a token, plus each message's markers."""
    prompt = sum(
        estimate_tokens_from_text(len(m.text())) + MESSAGE_TOKEN_ALLOWANCE for m in request.messages
    )
    completion = estimate_tokens_from_text(completion_characters)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
