"""The statements of a call's ticket — opened pending, completed, released or swept —
built once per store and bound per call (the request path).

A ticket's row is found by its exchange and round (``l_request_id``, ``l_round``): the
rows of one built-in tool exchange share its ``request_id``.

Bind names carry a prefix because SQLAlchemy reserves a column's own name in SET clauses.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, bindparam, delete, insert, select, update

from .tables import Tables


class SettlementStatements:
    """The ticket and money statements on one prefix's tables."""

    def __init__(self, tables: Tables) -> None:
        api_keys, ledger, provider_totals = tables.api_keys, tables.ledger, tables.provider_totals
        _k, _l, _t = api_keys.c, ledger.c, provider_totals.c
        key = _k.id == bindparam("s_key")
        pending = _l.status == "pending"
        ticket = (_l.request_id == bindparam("l_request_id"), _l.round == bindparam("l_round"))

        self.ticket_insert = insert(ledger)

        # Completes the ticket's row, only while it is still pending: whoever completes it
        # first (the call's own settlement, a retry of it, or the sweeper) is the only one
        # to move money.
        complete = update(ledger).values(
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
        self.ticket_complete = complete.where(*ticket, pending)
        # The call's own settlement, after the sweeper closed its row: still billed, once.
        self.ticket_complete_late = complete.where(*ticket, _l.status == "abandoned")

        # A request that never became a call (no provider could carry it) leaves no row.
        self.ticket_delete = delete(ledger).where(*ticket, pending)

        # A built-in tool exchange's next round is opened by settling the one before it in
        # the same transaction (``Store.settle_and_open``): the key's row is locked first,
        # as in the admission, and read for whether it is still active.
        self.lock_key_state = select(_k.revoked_at).where(key).with_for_update()

        # A pending round's reservation resized (``Store.resize_reservation``): more is
        # taken only if the balance covers it (so concurrent rounds of one key never drive
        # it below zero); the row changes only while pending with the reservation the
        # caller holds, else the transaction rolls back whatever the key gave.
        reserve = bindparam("s_reserved", type_=BigInteger)
        self.take_credits = (
            update(api_keys)
            .where(key, _k.balance_nanos >= reserve)
            .values(balance_nanos=_k.balance_nanos - reserve)
        )
        self.ticket_resize = (
            update(ledger)
            .where(*ticket, pending, _l.reserved_nanos == bindparam("l_held", type_=BigInteger))
            .values(reserved_nanos=bindparam("l_reserved", type_=BigInteger))
        )

        self.ticket_abandon = (
            update(ledger)
            .where(_l.id == bindparam("l_id"), pending)
            .values(
                status="abandoned",
                finished_at=bindparam("l_finished_at"),
                error=bindparam("l_error"),
                deadline_at=None,
            )
        )

        self.charge = (
            update(api_keys)
            .where(key)
            .values(
                balance_nanos=_k.balance_nanos + bindparam("s_refund"),
                spent_nanos=_k.spent_nanos + bindparam("s_charged"),
            )
        )

        self.release_allowance = (
            update(api_keys)
            .where(key, _k.quota_day == bindparam("s_day"), _k.day_count > 0)
            .values(day_count=_k.day_count - 1)
        )

        self.release_credits = (
            update(api_keys)
            .where(key)
            .values(balance_nanos=_k.balance_nanos + bindparam("s_reserved"))
        )

        # Reopens the throttle slot, unless a later admission already moved it on.
        self.release_throttle_slot = (
            update(api_keys)
            .where(key, _k.next_slot_at == bindparam("s_slot"))
            .values(next_slot_at=bindparam("s_at"))
        )

        self.add_provider_total = (
            update(provider_totals)
            .where(_t.provider == bindparam("t_provider"))
            .values(
                # the exchanges (round 1), as the usage report counts them
                requests=_t.requests + bindparam("t_requests"),
                prompt_tokens=_t.prompt_tokens + bindparam("t_prompt"),
                completion_tokens=_t.completion_tokens + bindparam("t_completion"),
                cost_nanos=_t.cost_nanos + bindparam("t_cost"),
            )
        )
        self.create_provider_row = insert(provider_totals).values(
            requests=0, prompt_tokens=0, completion_tokens=0, cost_nanos=0
        )
