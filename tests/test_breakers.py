"""The circuit breaker state machine, on a fake clock: closed, open, half-open and back."""

from __future__ import annotations

import threading

import pytest

from llmrouter.breakers import BreakerPolicy, Breakers, BreakerState, Passage
from llmrouter.errors import FailureScope

POLICY = BreakerPolicy(cooldown_after=3, cooldown_seconds=30.0)
DEPLOYMENT, PROVIDER, REQUEST = FailureScope.DEPLOYMENT, FailureScope.PROVIDER, FailureScope.REQUEST


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breakers(clock: FakeClock) -> Breakers:
    return Breakers(clock)


def enter(breakers: Breakers, model: str = "a", policy: BreakerPolicy = POLICY) -> Passage:
    passage = breakers.enter("P", model, policy)
    assert passage is not None, f"P#{model} should let the request through"
    return passage


def fail(
    breakers: Breakers, times: int, scope: FailureScope = DEPLOYMENT, model: str = "a"
) -> None:
    for _ in range(times):
        enter(breakers, model).failed(scope)


def test_a_deployment_opens_after_cooldown_after_failures_in_a_row(breakers: Breakers) -> None:
    fail(breakers, 2)
    assert breakers.state("P", "a") is BreakerState.CLOSED

    fail(breakers, 1)

    assert breakers.state("P", "a") is BreakerState.OPEN
    assert breakers.enter("P", "a", POLICY) is None
    assert breakers.seconds_until_half_open("P", "a") == 30.0


def test_a_success_resets_the_count(breakers: Breakers) -> None:
    fail(breakers, 2)
    enter(breakers).succeeded()
    fail(breakers, 2)

    assert breakers.state("P", "a") is BreakerState.CLOSED


def test_other_deployments_and_the_provider_stay_closed(breakers: Breakers) -> None:
    fail(breakers, 3)

    assert breakers.state("P", "b") is BreakerState.CLOSED
    assert breakers.state("P") is BreakerState.CLOSED
    enter(breakers, "b").succeeded()


def test_half_open_after_the_cooldown_lets_one_probe_through(
    breakers: Breakers, clock: FakeClock
) -> None:
    fail(breakers, 3)
    clock.now += 29.5
    assert breakers.enter("P", "a", POLICY) is None
    assert breakers.seconds_until_half_open("P", "a") == 0.5

    clock.now += 0.5
    assert breakers.state("P", "a") is BreakerState.HALF_OPEN
    probe = enter(breakers)

    assert breakers.enter("P", "a", POLICY) is None  # the probe is out: treated as open
    assert breakers.seconds_until_half_open("P", "a") == 0.0
    probe.succeeded()
    assert breakers.state("P", "a") is BreakerState.CLOSED
    enter(breakers).succeeded()


def test_a_failed_probe_reopens_for_another_cooldown(breakers: Breakers, clock: FakeClock) -> None:
    fail(breakers, 3)
    clock.now += 30

    enter(breakers).failed(DEPLOYMENT)  # one failure is enough in half-open

    assert breakers.state("P", "a") is BreakerState.OPEN
    assert breakers.seconds_until_half_open("P", "a") == 30.0
    clock.now += 30
    enter(breakers).succeeded()
    assert breakers.state("P", "a") is BreakerState.CLOSED


def test_a_probe_ending_with_no_verdict_leaves_it_half_open_for_the_next(
    breakers: Breakers, clock: FakeClock
) -> None:
    fail(breakers, 3)
    clock.now += 30

    enter(breakers).failed(REQUEST)  # e.g. the probe's request was refused with a 400
    enter(breakers).abandoned()

    assert breakers.state("P", "a") is BreakerState.HALF_OPEN
    enter(breakers).succeeded()
    assert breakers.state("P", "a") is BreakerState.CLOSED


def test_concurrent_requests_in_half_open_admit_exactly_one_probe(
    breakers: Breakers, clock: FakeClock
) -> None:
    fail(breakers, 3)
    clock.now += 30
    start = threading.Barrier(16)
    admitted: list[Passage] = []

    def request() -> None:
        start.wait()
        passage = breakers.enter("P", "a", POLICY)
        if passage is not None:
            admitted.append(passage)

    threads = [threading.Thread(target=request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(admitted) == 1


def test_request_scoped_failures_never_open_anything(breakers: Breakers) -> None:
    fail(breakers, 50, REQUEST)

    assert breakers.state("P", "a") is BreakerState.CLOSED
    assert breakers.state("P") is BreakerState.CLOSED


def test_provider_scoped_failures_open_every_deployment_of_the_provider(
    breakers: Breakers, clock: FakeClock
) -> None:
    enter(breakers, "a").failed(PROVIDER)
    enter(breakers, "b").failed(PROVIDER)
    enter(breakers, "c").failed(PROVIDER)

    assert breakers.state("P") is BreakerState.OPEN
    assert breakers.state("P", "a") is BreakerState.CLOSED  # nothing said about the model
    for model in ("a", "b", "never-asked"):
        assert breakers.enter("P", model, POLICY) is None
    assert breakers.enter("Q", "a", POLICY) is not None

    clock.now += 30
    enter(breakers, "b").succeeded()  # the probe, through any deployment
    assert breakers.state("P") is BreakerState.CLOSED


def test_an_answered_deployment_failure_proves_the_provider_reachable(
    breakers: Breakers, clock: FakeClock
) -> None:
    fail(breakers, 3, PROVIDER)
    clock.now += 30

    enter(breakers, "a").failed(DEPLOYMENT)  # a 500: the provider answered

    assert breakers.state("P") is BreakerState.CLOSED
    assert breakers.state("P", "a") is BreakerState.CLOSED  # one of three


def test_reporting_twice_counts_once(breakers: Breakers) -> None:
    passage = enter(breakers)
    for _ in range(3):
        passage.failed(DEPLOYMENT)

    assert breakers.state("P", "a") is BreakerState.CLOSED


def test_cooldown_seconds_zero_turns_the_breakers_off(breakers: Breakers) -> None:
    off = BreakerPolicy(cooldown_after=1, cooldown_seconds=0)
    for _ in range(5):
        enter(breakers, policy=off).failed(DEPLOYMENT)

    assert breakers.state("P", "a") is BreakerState.CLOSED


def test_only_breakers_with_something_to_remember_are_kept(breakers: Breakers) -> None:
    for index in range(1000):
        enter(breakers, f"unlisted-{index}").failed(REQUEST)
        enter(breakers, f"other-{index}").succeeded()
    fail(breakers, 1)
    enter(breakers).succeeded()

    assert breakers._breakers == {}
