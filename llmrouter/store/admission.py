"""The admission statement: one atomic UPDATE that decides a request's fate.

It reads the key's fair-use state and balance and writes the decision in the same
statement, so concurrent requests from any number of processes can neither overrun the
allowance, take one throttle slot twice, nor drive a balance below zero. The outcome is
stored in ``last_admission`` and read back under the row lock (RETURNING where the
database has it, a SELECT in the same transaction on MariaDB/MySQL).

The statement also checks what its caller decided on, so a key changed in another process
is refused at once, without a cache in any process having to expire:

- the secret: the WHERE clause requires the hash of the secret the request came with
  (``by_secret``), so once a key is rotated its old secret matches no row, and the caller
  answers 401 (a host-authenticated caller without a secret is checked by id only);
- the restrictions (``allowed_models`` / ``allowed_providers``): the caller checks the
  target against the key's restrictions in Python, exactly as names resolve, and binds
  the ``restrictions_version`` it checked; when the row's version differs the outcome is
  ``STALE_RESTRICTIONS`` (nothing taken) and the caller reads the key again. So the hot
  path stays one statement comparing one more integer, instead of matching lists in SQL
  (where LIKE and collations differ between SQLite, PostgreSQL and MariaDB) or reading
  the lists again under the lock on every request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Update,
    and_,
    bindparam,
    case,
    func,
    literal,
    not_,
    update,
)

from .records import AdmissionKind
from .tables import Tables

#: stands for "no per-minute limit" inside SQL comparisons
UNLIMITED = 2**31 - 1


def result_columns(tables: Tables) -> tuple[Any, ...]:
    """What the admission hands back: the outcome and the key's quota state after it."""
    _k = tables.api_keys.c
    return (
        _k.last_admission,
        _k.day_count,
        _k.next_slot_at,
        _k.minute_count,
        _k.balance_nanos,
        func.coalesce(_k.daily_requests, bindparam("default_limit")).label("daily_limit"),
        func.coalesce(_k.requests_per_minute, bindparam("default_rpm")).label("rpm"),
    )


def admission_statement(
    tables: Tables, *, premium: bool, left_to_right: bool, by_secret: bool = True
) -> Update:
    """The UPDATE for one key (bind ``key_id, a_restrictions_version, day, now, minute,
    reserve``, the defaults and, ``by_secret``, ``a_secret_hash``).

    ``left_to_right``: MySQL/MariaDB evaluate SET assignments in order, each seeing the
    ones before it; there the later assignments read the outcome from ``last_admission``
    (assigned first). Standard SQL (PostgreSQL, SQLite) evaluates every assignment against
    the old row, so there they repeat the outcome expression instead.
    """
    api_keys = tables.api_keys
    _k = api_keys.c
    day = bindparam("day", type_=BigInteger)
    now = bindparam("now", type_=BigInteger)
    minute = bindparam("minute", type_=BigInteger)
    reserve = bindparam("reserve", type_=BigInteger)
    limit = func.coalesce(_k.daily_requests, bindparam("default_limit"))
    throttle_ms = func.coalesce(_k.throttle_seconds, bindparam("default_throttle")) * 1000
    rpm = func.coalesce(_k.requests_per_minute, bindparam("default_rpm"))

    count_today = case((_k.quota_day == day, _k.day_count), else_=0)
    count_this_minute = case((_k.minute == minute, _k.minute_count), else_=0)
    within_minute = count_this_minute < rpm
    stale = _k.restrictions_version != bindparam("a_restrictions_version", type_=Integer)
    if premium:
        decided = case(
            (stale, AdmissionKind.STALE_RESTRICTIONS.value),
            (not_(within_minute), AdmissionKind.REJECTED_PER_MINUTE.value),
            (_k.balance_nanos >= reserve, AdmissionKind.CREDITS.value),
            else_=AdmissionKind.REJECTED_NO_CREDITS.value,
        )
    else:
        decided = case(
            (stale, AdmissionKind.STALE_RESTRICTIONS.value),
            (not_(within_minute), AdmissionKind.REJECTED_PER_MINUTE.value),
            (count_today < limit, AdmissionKind.ALLOWANCE.value),
            (and_(_k.balance_nanos >= reserve, reserve > 0), AdmissionKind.CREDITS.value),
            (_k.next_slot_at <= now, AdmissionKind.THROTTLE_SLOT.value),
            else_=AdmissionKind.REJECTED_THROTTLED.value,
        )
    outcome = _k.last_admission if left_to_right else decided

    def when(kind: AdmissionKind, then, otherwise):
        return case((outcome == literal(kind.value), then), else_=otherwise)

    admitted = outcome <= literal(AdmissionKind.THROTTLE_SLOT.value)
    # Order matters only where assignments run left to right: last_admission first, and
    # every column assigned after all the expressions that read its old value.
    found = [_k.id == bindparam("key_id"), _k.revoked_at.is_(None)]
    if by_secret:
        found.append(_k.secret_hash == bindparam("a_secret_hash"))
    return (
        update(api_keys)
        .where(*found)
        .ordered_values(
            (_k.last_admission, decided),
            (_k.day_count, when(AdmissionKind.ALLOWANCE, count_today + 1, count_today)),
            (_k.quota_day, day),
            (_k.minute_count, case((admitted, count_this_minute + 1), else_=count_this_minute)),
            (_k.minute, minute),
            (
                _k.balance_nanos,
                when(AdmissionKind.CREDITS, _k.balance_nanos - reserve, _k.balance_nanos),
            ),
            (
                _k.next_slot_at,
                when(AdmissionKind.THROTTLE_SLOT, now + throttle_ms, _k.next_slot_at),
            ),
        )
    )
