"""The statements that settle a call, built once and bound per call (the request path).

Bind names carry a prefix because SQLAlchemy reserves a column's own name in SET clauses.
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, update

from .tables import api_keys, ledger, provider_totals

_k = api_keys.c
_t = provider_totals.c
_key = _k.id == bindparam("s_key")

LEDGER_INSERT = insert(ledger)

CHARGE = (
    update(api_keys)
    .where(_key)
    .values(
        balance_nanos=_k.balance_nanos + bindparam("s_refund"),
        spent_nanos=_k.spent_nanos + bindparam("s_charged"),
    )
)

RELEASE_ALLOWANCE = (
    update(api_keys)
    .where(_key, _k.quota_day == bindparam("s_day"), _k.day_count > 0)
    .values(day_count=_k.day_count - 1)
)

RELEASE_CREDITS = (
    update(api_keys).where(_key).values(balance_nanos=_k.balance_nanos + bindparam("s_reserved"))
)

# Reopens the throttle slot, unless a later admission already moved it on.
RELEASE_THROTTLE_SLOT = (
    update(api_keys)
    .where(_key, _k.next_slot_at == bindparam("s_slot"))
    .values(next_slot_at=bindparam("s_at"))
)

ADD_PROVIDER_TOTAL = (
    update(provider_totals)
    .where(_t.provider == bindparam("t_provider"))
    .values(
        requests=_t.requests + 1,
        prompt_tokens=_t.prompt_tokens + bindparam("t_prompt"),
        completion_tokens=_t.completion_tokens + bindparam("t_completion"),
        cost_nanos=_t.cost_nanos + bindparam("t_cost"),
    )
)
