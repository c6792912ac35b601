"""What a video costs: the estimate reserved at create, and the charge at success.

A video model is priced one of two ways:

- per token (``completion_price``), as Ark bills Seedance: a video of width × height pixels
  (Ark's frame size for the resolution and ratio),
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

#: width x height of each resolution bucket and ratio, as Ark's Seedance tables give them
_SIZES = {
    "480p": {"16:9": (864, 480), "4:3": (736, 544), "1:1": (640, 640), "3:4": (544, 736),
             "9:16": (480, 864), "21:9": (960, 416)},
    "720p": {"16:9": (1280, 720), "4:3": (1112, 834), "1:1": (960, 960), "3:4": (834, 1112),
             "9:16": (720, 1280), "21:9": (1470, 630)},
    "1080p": {"16:9": (1920, 1080), "4:3": (1664, 1248), "1:1": (1440, 1440),
              "3:4": (1248, 1664), "9:16": (1080, 1920), "21:9": (2176, 928)},
}  # fmt: skip
_TOKEN_PIXELS = 1024


def _pixels(resolution: str, ratio: str) -> int | None:
    """The frame's pixels; a ratio not in the table counts as the bucket's largest frame
    (an estimate must not come out low)."""
    sizes = _SIZES.get(resolution)
    if sizes is None:
        return None
    width, height = sizes.get(ratio) or max(sizes.values(), key=lambda s: s[0] * s[1])
    return width * height


def video_tokens(model: ModelSettings, resolution: str, ratio: str, seconds: int | Decimal) -> int:
    """The tokens of a video of ``seconds`` at ``resolution`` and ``ratio`` (Ark's formula)."""
    pixels = _pixels(resolution, ratio)
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
    tokens = video_tokens(model, request.resolution, request.ratio, request.duration)
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
        tokens = video_tokens(model, request.resolution, request.ratio, request.duration)
    return _nanos(model.completion_price * tokens)


def _nanos(usd: Decimal) -> int:
    """USD to nano-dollars, rounded up (a fraction of a nano-dollar is never given away)."""
    return usd_to_nanos(max(usd, Decimal(0)).quantize(Decimal("1e-9"), rounding=ROUND_CEILING))
