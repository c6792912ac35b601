"""Circuit breakers: a deployment (a provider and one of its upstream models) or a whole
provider that keeps failing is skipped for a while, then trusted again after one probe.

Each breaker moves through three states::

    closed ──(cooldown_after counted failures in a row)──▶ open
    open ──(cooldown_seconds later)──▶ half-open
    half-open ──(its one probe request succeeds)──▶ closed
    half-open ──(the probe fails)──▶ open, for another cooldown_seconds

A request is let through only when every breaker in its way lets it: its deployment's and
its provider's. In half-open, exactly one request is the probe; the others meanwhile are
turned away as if it were open. The dispatcher reports each request's outcome once, after
its retries on that deployment, and what a failure counts against is its ``scope``:

- ``deployment`` (5xx, timeouts, broken streams, 429): the deployment's breaker only, so one
  failing model never blocks its provider's other models. The provider answered, which
  counts as a success of the provider's breaker.
- ``provider`` (connection refused, DNS, TLS, our credentials refused): the provider-wide
  breaker, which blocks every deployment of that provider while open.
- ``request`` (a 400/404/422 about the request, or a request the format cannot carry):
  nothing. Such an outcome neither counts nor resets a count, and a probe ending so leaves
  the breaker half-open for the next request to probe.

Any success closes both breakers and forgets their counts. There is no failure window: a
count only grows while nothing succeeds in between, which is evidence however slowly it
accrues. ``cooldown_seconds = 0`` turns a provider's breakers off.

State is kept per process, in memory: every process of a deployment learns on its own, and
a restart forgets it. Only breakers with something to remember are stored, so client-chosen
(unlisted) model ids that never fail take no memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum, StrEnum

from .errors import FailureScope


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a provider's breakers open and for how long (its ``cooldown_*`` settings)."""

    cooldown_after: int
    cooldown_seconds: float

    @property
    def enabled(self) -> bool:
        return self.cooldown_seconds > 0


class CircuitBreaker:
    """One breaker's state machine. It takes ``now`` from its caller and has no lock of
    its own: ``Breakers`` keeps all of them behind one."""

    def __init__(self) -> None:
        self.failures = 0  # counted failures in a row while closed
        self.open_until: float | None = None  # None while closed
        self.probing = False  # the one probe of the half-open state is out

    def state(self, now: float) -> BreakerState:
        if self.open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self.open_until else BreakerState.HALF_OPEN

    def admits(self, now: float) -> bool:
        state = self.state(now)
        return state is BreakerState.CLOSED or (
            state is BreakerState.HALF_OPEN and not self.probing
        )

    def enter(self, now: float) -> bool:
        """Let one request through (``admits`` said so); True when it is the probe."""
        if self.state(now) is BreakerState.HALF_OPEN:
            self.probing = True
            return True
        return False

    def seconds_until_half_open(self, now: float) -> float:
        return 0.0 if self.open_until is None else max(0.0, self.open_until - now)

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = None
        self.probing = False

    def failed(self, now: float, *, probe: bool, policy: BreakerPolicy) -> None:
        if probe:
            self.probing = False
        if self.open_until is None:
            self.failures += 1
            if self.failures >= policy.cooldown_after:
                self.failures = 0
                self.open_until = now + policy.cooldown_seconds
        elif probe:
            self.open_until = now + policy.cooldown_seconds
        # A request let in before the breaker opened adds nothing to an open breaker.

    def released(self, *, probe: bool) -> None:
        """The request's outcome said nothing about this breaker."""
        if probe:
            self.probing = False

    @property
    def pristine(self) -> bool:
        return self.failures == 0 and self.open_until is None and not self.probing


_Key = tuple[str, ...]


class Breakers:
    """Every deployment's and provider's breaker in this process. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[_Key, CircuitBreaker] = {}

    def enter(self, provider: str, model: str, policy: BreakerPolicy) -> Passage | None:
        """Leave for one request to try ``model`` of ``provider``, or None while a breaker
        in its way is open (or half-open with its probe out)."""
        keys = (_provider_key(provider), _deployment_key(provider, model))
        if not policy.enabled:
            return Passage(self, policy, keys, frozenset())
        with self._lock:
            now = self._clock()
            present = [(key, self._breakers[key]) for key in keys if key in self._breakers]
            if not all(breaker.admits(now) for _, breaker in present):
                return None
            probes = frozenset(key for key, breaker in present if breaker.enter(now))
        return Passage(self, policy, keys, probes)

    def seconds_until_half_open(self, provider: str, model: str) -> float:
        """How long until ``model`` of ``provider`` may be tried again (0: it may now)."""
        keys = (_provider_key(provider), _deployment_key(provider, model))
        with self._lock:
            now = self._clock()
            return max(
                (
                    self._breakers[k].seconds_until_half_open(now)
                    for k in keys
                    if k in self._breakers
                ),
                default=0.0,
            )

    def state(self, provider: str, model: str | None = None) -> BreakerState:
        """The state of ``model``'s breaker, or (no ``model``) of the provider-wide one."""
        key = _provider_key(provider) if model is None else _deployment_key(provider, model)
        with self._lock:
            breaker = self._breakers.get(key)
            return breaker.state(self._clock()) if breaker else BreakerState.CLOSED

    def forget(self, providers: Collection[str]) -> None:
        """Drop every breaker of ``providers`` (their settings changed: a fixed key or URL
        deserves a fresh start, not the cooldown its old self earned)."""
        with self._lock:
            for key in [k for k in self._breakers if k[1] in providers]:
                del self._breakers[key]

    def _report(self, passage: Passage, outcome: _Outcome) -> None:
        with self._lock:
            now = self._clock()
            for key, verdict in zip(passage.keys, _VERDICTS[outcome], strict=True):
                probe = key in passage.probes
                breaker = self._breakers.get(key)
                if verdict is _Verdict.FAILED:
                    breaker = self._breakers.setdefault(key, CircuitBreaker())
                    breaker.failed(now, probe=probe, policy=passage.policy)
                elif breaker is None:
                    continue
                elif verdict is _Verdict.SUCCEEDED:
                    breaker.succeeded()
                else:
                    breaker.released(probe=probe)
                if breaker.pristine:
                    del self._breakers[key]


class Passage:
    """One request's leave to try one deployment; its outcome is reported exactly once."""

    def __init__(
        self,
        breakers: Breakers,
        policy: BreakerPolicy,
        keys: tuple[_Key, _Key],
        probes: frozenset[_Key],
    ) -> None:
        self._breakers = breakers
        self.policy = policy
        self.keys = keys
        self.probes = probes
        self._reported = False

    def succeeded(self) -> None:
        self._settle(_Outcome.SUCCESS)

    def failed(self, scope: FailureScope) -> None:
        self._settle(_Outcome(scope.value))

    def abandoned(self) -> None:
        """The request ended without an outcome (an interruption or a bug)."""
        self._settle(_Outcome.REQUEST)

    def _settle(self, outcome: _Outcome) -> None:
        if self._reported or not self.policy.enabled:
            return
        self._reported = True
        self._breakers._report(self, outcome)


class _Outcome(Enum):
    SUCCESS = "success"
    REQUEST = FailureScope.REQUEST.value
    DEPLOYMENT = FailureScope.DEPLOYMENT.value
    PROVIDER = FailureScope.PROVIDER.value


class _Verdict(Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SILENT = "silent"  # says nothing about this breaker


#: what an outcome means for (the provider's breaker, the deployment's breaker)
_VERDICTS = {
    _Outcome.SUCCESS: (_Verdict.SUCCEEDED, _Verdict.SUCCEEDED),
    # the provider answered, so it is reachable and takes our credentials
    _Outcome.DEPLOYMENT: (_Verdict.SUCCEEDED, _Verdict.FAILED),
    _Outcome.PROVIDER: (_Verdict.FAILED, _Verdict.SILENT),
    _Outcome.REQUEST: (_Verdict.SILENT, _Verdict.SILENT),
}


def _provider_key(provider: str) -> _Key:
    return ("provider", provider)


def _deployment_key(provider: str, model: str) -> _Key:
    return ("deployment", provider, model)
