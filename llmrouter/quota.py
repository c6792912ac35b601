"""The fair-use policy: what an admission means for the caller (headers, 429, 402).

Headers (``X-RateLimit-*``) describe the key's daily fair-use allowance:
``Limit`` the allowance, ``Remaining`` what is left of it today, ``Reset`` (Unix seconds)
when the allowance comes back (the next UTC midnight) while some remains or the key pays
from its balance; for a throttled key, when the next throttle slot opens (or midnight if
sooner).
"""

from __future__ import annotations

from dataclasses import dataclass

from .billing import nanos_to_usd
from .config import QuotaSettings
from .errors import InsufficientCreditsError, RateLimitError
from .store import Admission, AdmissionKind, QuotaDefaults

DAY_MS = 86_400_000
MINUTE_MS = 60_000


@dataclass(frozen=True)
class RateLimitInfo:
    limit: int
    remaining: int
    reset_ms: int  # Unix milliseconds

    @property
    def reset(self) -> int:
        """Unix seconds, rounded up: never earlier than the real reset."""
        return -(-self.reset_ms // 1000)

    def seconds_from(self, now_ms: int) -> int:
        return -(-(self.reset_ms - now_ms) // 1000)

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class QuotaPolicy:
    def __init__(self, settings: QuotaSettings) -> None:
        self.defaults = QuotaDefaults(
            daily_requests=settings.daily_requests,
            throttle_seconds=settings.throttle_seconds,
            requests_per_minute=settings.requests_per_minute,
        )

    def check(self, admission: Admission, *, needed_nanos: int) -> RateLimitInfo:
        """The rate-limit state for an admitted call; raises for a rejected one."""
        info = rate_limit_info(admission)
        kind = admission.kind
        if kind.admitted:
            return info
        if kind is AdmissionKind.REJECTED_PER_MINUTE:
            wait_ms = MINUTE_MS - admission.at % MINUTE_MS
            raise RateLimitError(
                f"Rate limit reached: {admission.requests_per_minute} requests per minute "
                f"for this key. Try again in {-(-wait_ms // 1000)} s.",
                retry_after=-(-wait_ms // 1000),
                headers=info.headers(),
            )
        if kind is AdmissionKind.REJECTED_NO_CREDITS:
            raise InsufficientCreditsError(
                "This model is premium and is paid from the key's prepaid balance: "
                f"${nanos_to_usd(admission.balance_nanos)} available, up to "
                f"${nanos_to_usd(needed_nanos)} needed. Top up the key to use it.",
                headers=info.headers(),
            )
        balance_note = (
            f" The balance (${nanos_to_usd(admission.balance_nanos)}) does not cover "
            f"this request (up to ${nanos_to_usd(needed_nanos)})."
            if admission.balance_nanos
            else " A prepaid top-up lifts the throttle."
        )
        wait = info.seconds_from(admission.at)
        raise RateLimitError(
            f"Daily fair-use allowance of {admission.daily_limit} requests used; the key is "
            f"throttled to one request per throttle window. Try again in {wait} s." + balance_note,
            retry_after=wait,
            headers=info.headers(),
        )


def rate_limit_info(admission: Admission) -> RateLimitInfo:
    remaining = max(0, admission.daily_limit - admission.day_count)
    midnight = (admission.day + 1) * DAY_MS
    throttled = admission.kind in (AdmissionKind.THROTTLE_SLOT, AdmissionKind.REJECTED_THROTTLED)
    # With a balance, the requests past the allowance are paid, not throttled.
    paying = admission.kind is AdmissionKind.CREDITS or admission.balance_nanos > 0
    if remaining or (paying and not throttled):
        reset_ms = midnight
    else:
        reset_ms = min(max(admission.next_slot_at, admission.at), midnight)
    return RateLimitInfo(admission.daily_limit, remaining, reset_ms)
