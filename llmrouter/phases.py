"""The request phases around a stored admission ticket:

    admit (the one atomic statement) -> Ticket -> dispatch -> settle(ticket, usage)
                                                           or release(ticket)

``admit`` writes the ticket (the call's ``pending`` ledger row) in the admission's own
transaction; ``settle`` completes it and moves the money, ``release`` hands back what it took
when no call was made. Each happens once per ticket whichever process does it, however often
it is asked: the store's statements are conditional on the row still being ``pending``. A chat
request runs every phase in one call (``Router.complete``); a video task keeps its ticket
with the task row and settles it minutes later, possibly in another process; a tool loop
dispatches several rounds under one ticket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from .billing import Prices
from .errors import (
    AuthenticationError,
    InsufficientCreditsError,
    LLMRouterError,
    ModelNotAllowedError,
    NotFoundError,
    StoreUnavailableError,
    UpstreamError,
)
from .keys import KeyAuthenticator
from .naming import Target
from .quota import QuotaPolicy, RateLimitInfo
from .schemas import Usage
from .settlement_queue import SettlementQueue
from .store import Admission, AdmissionKind, KeyRecord, Settlement, Store, Ticket

log = logging.getLogger("llmrouter")
#: token counts are bounded so a provider reporting nonsense (negative, or past an INTEGER
#: column) can neither pay a key nor fail an answered call
MAX_TOKENS_REPORTED = 2**31 - 1


@dataclass(frozen=True)
class Admitted:
    """An admitted request: its stored ticket, the key's rate-limit state, and the targets
    it may be served by (the key's restrictions applied; a premium model only when paid)."""

    ticket: Ticket
    rate_limit: RateLimitInfo
    targets: list[Target]

    @property
    def paid(self) -> bool:
        return self.ticket.kind is AdmissionKind.CREDITS


class RequestPhases:
    """The phases of every request of one Router. Thread-safe."""

    def __init__(
        self,
        store: Store,
        quota: QuotaPolicy,
        keys: KeyAuthenticator,
        now_ms: Callable[[], int],
        settlements: SettlementQueue,
    ) -> None:
        self._store = store
        self._quota = quota
        self._keys = keys
        self._now_ms = now_ms
        self._settlements = settlements

    def admit(
        self,
        key: KeyRecord,
        targets: list[Target],
        reserve_nanos: int,
        *,
        request_id: str,
        lifetime_ms: int,
        paid_only: bool = False,
    ) -> Admitted:
        """Admit a call to ``targets[0]`` (its fallbacks after it) for ``key``, reserving
        ``reserve_nanos`` when it is paid; its ticket lives ``lifetime_ms`` before the
        sweeper may close it. ``paid_only``: paid from the balance whatever the allowance
        (as a premium model is; a video always is). A refusal raises (401, 403, 402, 429),
        with nothing taken."""
        admission, targets = self._admission(
            key,
            targets,
            reserve_nanos,
            request_id=request_id,
            lifetime_ms=lifetime_ms,
            paid_only=paid_only,
        )
        rate_limit = self._quota.check(admission, needed_nanos=reserve_nanos)
        ticket = admission.ticket
        assert ticket is not None  # quota.check raised for a request not admitted
        if admission.kind is not AdmissionKind.CREDITS:
            # Only a paid call may be served by a premium model, a fallback included (the
            # primary is never premium here: premium is paid for or refused at admission).
            targets = [t for t in targets if not t.model.premium]
        return Admitted(ticket, rate_limit, targets)

    def allowed_targets(
        self, key: KeyRecord, targets: list[Target]
    ) -> tuple[KeyRecord, list[Target]]:
        """The targets ``key`` may call: the primary or a 403, and the fallbacks its
        restrictions allow. A refusal is checked on the key read afresh (a cached record
        may predate a restriction lifted in another process)."""
        primary = targets[0]
        if not key.allows(primary.provider, primary.public_id):
            key = self._keys.refresh(key)
            if not key.allows(primary.provider, primary.public_id):
                raise ModelNotAllowedError(
                    f"This API key may not use the model '{primary.public_id}'.", param="model"
                )
        return key, [t for t in targets if key.allows(t.provider, t.public_id)]

    def _admission(
        self,
        key: KeyRecord,
        targets: list[Target],
        reserve: int,
        *,
        request_id: str,
        lifetime_ms: int,
        paid_only: bool,
    ) -> tuple[Admission, list[Target]]:
        """The admission of a call to ``targets`` (allowed by ``key``'s restrictions), and
        the targets allowed by the key as the statement found it. The statement refuses a
        secret rotated away (401 here) and a decision made on restrictions changed
        meanwhile, in any process; then the key is read again and the decision made again
        (a few times at most: the restrictions would have to change again each time)."""
        target = targets[0]
        for _ in range(3):
            now = self._now_ms()
            try:
                admission = self._store.admit(
                    key.id,
                    request_id=request_id,
                    now=now,
                    deadline_at=now + lifetime_ms,
                    defaults=self._quota.defaults,
                    reserve_nanos=reserve,
                    premium=paid_only or target.model.premium,
                    provider=target.provider,
                    model=target.public_id,
                    upstream_model=target.upstream_model,
                    secret_hash=key.secret_hash,
                    restrictions_version=key.restrictions_version,
                )
            except NotFoundError:
                # Rotated or revoked by another process while this one had the key cached.
                if key.secret_hash is not None:
                    self._keys.forget(key.secret_hash)
                raise AuthenticationError("This API key's secret was rotated or revoked.") from None
            if admission.kind is not AdmissionKind.STALE_RESTRICTIONS:
                return admission, targets
            key, targets = self.allowed_targets(self._keys.refresh(key), targets)
        raise StoreUnavailableError(
            "This API key's restrictions kept changing while the request was admitted; try again."
        )

    def carry_round(
        self,
        ticket: Ticket,
        served: Target,
        usage: Usage,
        estimated: bool,
        next_target: Target,
        *,
        lifetime_ms: int,
    ) -> tuple[Ticket, int]:
        """Settle ``ticket``'s round (answered: the model called built-in tools) and open the
        next round of its exchange in the same transaction, holding what this one did not
        use of its reservation (``grow_round`` then sizes it). Returns the next round's
        ticket and this round's cost. No allowance unit, throttle slot or minute is taken
        again. A key revoked meanwhile is a 401 (the round still billed); a database away
        defers the settlement and stops the exchange (503)."""
        settlement = self._settlement(ticket, served, "ok", usage, estimated)
        now = self._now_ms()
        try:
            opened = self._store.settle_and_open(
                settlement,
                now=now,
                deadline_at=now + lifetime_ms,
                provider=next_target.provider,
                model=next_target.public_id,
                upstream_model=next_target.upstream_model,
            )
        except NotFoundError:
            raise AuthenticationError(
                "This API key was revoked while its request was being answered."
            ) from None
        except StoreUnavailableError:
            self.write(lambda: self._settle_once(settlement), f"settlement of {ticket.request_id}")
            raise
        if opened is None:
            raise StoreUnavailableError(
                f"Round {ticket.round} of this request was settled elsewhere; try again."
            )
        return opened, settlement.cost_nanos

    def grow_round(self, ticket: Ticket, reserve_nanos: int) -> Ticket:
        """Make a paid round's hold ``reserve_nanos`` (what its call may cost) before it is
        dispatched: more taken from the balance, or the excess given back. A balance that
        cannot cover it ends the exchange with a 402, the round's row and hold handed back."""
        if ticket.kind is not AdmissionKind.CREDITS:
            return ticket
        try:
            grown = self._store.resize_reservation(ticket, reserve_nanos)
        except NotFoundError:
            raise StoreUnavailableError(
                f"Round {ticket.round} of this request was closed by the sweeper; try again."
            ) from None
        if grown is None:
            self.release(ticket)
            raise InsufficientCreditsError(
                f"The balance cannot cover round {ticket.round} of this request (the model "
                "asked for another round after built-in tool calls); the "
                f"{ticket.round - 1} round(s) before it are billed. Top up, or lower "
                "max_tokens."
            )
        return grown

    def release(self, ticket: Ticket) -> None:
        """Hand back what the admission took: the request never became a call (once)."""
        self.write(lambda: self._store.release(ticket), f"release of {ticket.request_id}")

    def dispatch_failed(self, ticket: Ticket, target: Target, exc: BaseException) -> None:
        """Account for a request no provider served: a failed call in the ledger, or, when
        no provider could even take the request, no call at all."""
        if isinstance(exc, UpstreamError) and not exc.is_call:
            self.release(ticket)
            return
        message = exc.message if isinstance(exc, LLMRouterError) else type(exc).__name__
        self.settle(ticket, target, "failed", Usage(), False, message)

    def settle(
        self,
        ticket: Ticket,
        served: Target,
        status: str,
        usage: Usage,
        estimated: bool,
        error: str | None = None,
        *,
        cost_nanos: int | None = None,
    ) -> int:
        """Settle the ticket's call (now, or in the background while the database is away;
        once, however often it is asked); returns its cost: ``cost_nanos`` when the caller
        priced it (a video by its seconds), else ``usage`` at the served model's prices. A
        credit-paid call is charged its cost, never more than its reservation."""
        settlement = self._settlement(
            ticket, served, status, usage, estimated, error, cost_nanos=cost_nanos
        )
        self.write(lambda: self._settle_once(settlement), f"settlement of {ticket.request_id}")
        return settlement.cost_nanos

    def _settlement(
        self,
        ticket: Ticket,
        served: Target,
        status: str,
        usage: Usage,
        estimated: bool,
        error: str | None = None,
        *,
        cost_nanos: int | None = None,
    ) -> Settlement:
        if status == "failed":  # nothing was delivered: nothing is billed
            usage, estimated, cost_nanos = Usage(), False, 0
        prompt = min(max(usage.prompt_tokens, 0), MAX_TOKENS_REPORTED)
        completion = min(max(usage.completion_tokens, 0), MAX_TOKENS_REPORTED)
        cost = (
            Prices.of(served.model).cost_nanos(prompt, completion)
            if cost_nanos is None
            else max(cost_nanos, 0)
        )
        return Settlement(
            ticket=ticket,
            provider=served.provider,
            model=served.public_id,
            upstream_model=served.upstream_model,
            status=status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_estimated=estimated,
            cost_nanos=cost,
            finished_at=self._now_ms(),
            error=error,
        )

    def _settle_once(self, settlement: Settlement) -> None:
        if not self._store.settle(settlement):
            # Settled already (a retry whose first write went through): nothing moves twice.
            log.info("settlement of %s was already written", settlement.request_id)

    def write(self, write: Callable[[], object], what: str) -> None:
        """Write now, or, while the database is unavailable, in the background until it is
        back (the caller is answered either way; the pending row holds the money). A write
        the database refuses for another reason is logged and its row left to the sweeper:
        an answered call is never failed by its bookkeeping."""
        try:
            write()
        except StoreUnavailableError:
            log.warning("%s deferred: the database is unavailable", what)
            self._settlements.submit(write, what)
        except SQLAlchemyError:
            log.exception("%s failed; its pending row is left to the sweeper", what)
