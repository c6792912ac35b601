"""The statements of a call's ticket — opened pending, completed, released or swept —
built once and bound per call (the request path).

Bind names carry a prefix because SQLAlchemy reserves a column's own name in SET clauses.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, insert, update

from .tables import api_keys, ledger, provider_totals

_k = api_keys.c
_l = ledger.c
_t = provider_totals.c
_key = _k.id == bindparam("s_key")
_pending = _l.status == "pending"

TICKET_INSERT = insert(ledger)

# Completes the ticket's row, only while it is still pending: whoever completes it first
# (the call's own settlement, a retry of it, or the sweeper) is the only one to move money.
_COMPLETE = update(ledger).values(
    provider=bindparam("l_provider"),
    model=bindparam("l_model"),
    upstream_model=bindparam("l_upstream_model"),
    status=bindparam("l_status"),
    prompt_tokens=bindparam("l_prompt_tokens"),
    completion_tokens=bindparam("l_completion_tokens"),
    usage_estimated=bindparam("l_usage_estimated"),
    cost_nanos=bindparam("l_cost_nanos"),
    charged_nanos=bindparam("l_charged_nanos"),
    day=bindparam("l_day"),
    finished_at=bindparam("l_finished_at"),
    error=bindparam("l_error"),
    deadline_at=None,
)
TICKET_COMPLETE = _COMPLETE.where(_l.request_id == bindparam("l_request_id"), _pending)
# The call's own settlement, after the sweeper closed its row: still billed, once.
TICKET_COMPLETE_LATE = _COMPLETE.where(
    _l.request_id == bindparam("l_request_id"), _l.status == "abandoned"
)

# A request that never became a call (no provider could carry it) leaves no row.
TICKET_DELETE = delete(ledger).where(_l.request_id == bindparam("l_request_id"), _pending)

TICKET_ABANDON = (
    update(ledger)
    .where(_l.id == bindparam("l_id"), _pending)
    .values(
        status="abandoned",
        finished_at=bindparam("l_finished_at"),
        error=bindparam("l_error"),
        deadline_at=None,
    )
)

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
