"""What a video costs: the estimate reserved at create, and the charge at success.

A video model is priced one of two ways:

- per token (``completion_price``), as Ark bills Seedance: a video of width × height pixels,
  ``fps`` frames a second, for ``duration`` seconds is ``width × height × fps × duration /
  1024`` tokens (rounded up). The estimate uses the requested resolution, ratio and
  duration; the charge the tokens the provider reports (else the estimate's count).
- per second by resolution (``price_per_second = { "720p" = "0.02", … }``): the estimate is
  the requested seconds at the resolution's rate; the charge the seconds the provider
  reports, else the requested ones.

A provider that reports its own price (OpenRouter's ``usage.cost``) is charged that. The
charge is never above the reservation (``Settlement.charged_nanos`` caps it); the ledger's
``cost_nanos`` keeps what the provider's report comes to.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

from ..billing import usd_to_nanos
from ..config import ModelSettings
from ..errors import InvalidRequestError
from ..providers.video_base import TaskUsage, VideoRequest

#: pixels of each resolution bucket at 16:9; other ratios keep the area (Ark's tables do)
_PIXELS = {
    "480p": 864 * 480,
    "720p": 1280 * 720,
    "1080p": 1920 * 1080,
}
_TOKEN_PIXELS = 1024


def video_tokens(model: ModelSettings, resolution: str, seconds: int | Decimal) -> int:
    """The tokens of a video of ``seconds`` at ``resolution`` (Ark's formula)."""
    pixels = _PIXELS.get(resolution)
    if pixels is None:
        raise InvalidRequestError(
            f"No token count is known for the resolution '{resolution}'.", param="resolution"
        )
    return math.ceil(Decimal(pixels * model.fps) * Decimal(seconds) / _TOKEN_PIXELS)


def estimate_nanos(model: ModelSettings, request: VideoRequest) -> int:
    """What a task of ``request`` may cost at most: the reservation."""
    if model.price_per_second:
        rate = model.price_per_second.get(request.resolution)
        if rate is None:
            raise InvalidRequestError(
                f"The model has no price for the resolution '{request.resolution}'.",
                param="resolution",
            )
        return _nanos(rate * request.duration)
    tokens = video_tokens(model, request.resolution, request.duration)
    return _nanos(model.completion_price * tokens)


def charge_nanos(model: ModelSettings, request: VideoRequest, usage: TaskUsage) -> int:
    """What a succeeded task costs, from what the provider reported."""
    if usage.cost is not None:
        return _nanos(usage.cost)
    if model.price_per_second:
        rate = model.price_per_second.get(request.resolution, Decimal(0))
        seconds = usage.seconds if usage.seconds is not None else Decimal(request.duration)
        return _nanos(rate * seconds)
    tokens = usage.completion_tokens
    if tokens is None:
        tokens = video_tokens(model, request.resolution, request.duration)
    return _nanos(model.completion_price * tokens)


def _nanos(usd: Decimal) -> int:
    """USD to nano-dollars, rounded up (a fraction of a nano-dollar is never given away)."""
    return usd_to_nanos(max(usd, Decimal(0)).quantize(Decimal("1e-9"), rounding=ROUND_CEILING))
