"""Retries, fallbacks and circuit breakers against a failing upstream, over real HTTP on
127.0.0.1.

The fake OpenAI upstream follows a script of faults (a fault may be for one model only);
``fake_openai.answered`` counts the requests that reached it. Waits before retries are
recorded, not slept.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from sqlalchemy import select

from llmrouter import Router
from llmrouter.breakers import BreakerState
from llmrouter.dispatch import MAX_RETRY_WAIT_SECONDS
from llmrouter.errors import UpstreamError, UpstreamRejectedError, UpstreamTimeoutError
from llmrouter.schemas import ChatRequest
from llmrouter.store.tables import ledger
from tests.conftest import gateway_config, wait_for
from tests.upstreams.openai_server import FakeOpenAI, Fault

GPT = "OpenAI#gpt-4o-mini"
#: a second model of the same provider, which the tests make fail
BROKEN = "OpenAI#gpt-broken"
HELLO = [{"role": "user", "content": "hello there"}]
WRONG_KEY = "sk-wrong-key-0123456789abcdef"


def with_openai(**settings: Any) -> pytest.MarkDecorator:
    """Run the test with the OpenAI provider's settings changed (``fallbacks``: its model's)."""
    return pytest.mark.parametrize("openai_settings", [settings], ids=[",".join(settings)])


@pytest.fixture
def openai_settings() -> dict[str, Any]:
    return {}


@pytest.fixture
def waits() -> list[float]:
    """The seconds the dispatcher waited before each retry."""
    return []


@pytest.fixture
def router(
    make_router: Callable[..., Router],
    fake_openai: FakeOpenAI,
    openai_settings: dict[str, Any],
    waits: list[float],
) -> Router:
    """The echo provider and the OpenAI one (no backoff), served by ``live_api``."""
    config = gateway_config(fake_openai.url)
    provider = config["providers"][1]
    settings = dict(openai_settings)
    provider["models"][0]["fallbacks"] = settings.pop("fallbacks", [])
    provider.update(settings)
    return make_router(config, sleep=waits.append)


@pytest.fixture
def client(live_api: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=api_key, max_retries=0)


def ledger_rows(router: Router) -> list[Any]:
    with router.store.transaction() as conn:
        return list(conn.execute(select(ledger).order_by(ledger.c.id)).all())


# --------------------------------------------------------------------------- retries


def test_a_500_is_retried_and_the_call_billed_once(
    router: Router, api_key: str, fake_openai: FakeOpenAI, waits: list[float]
) -> None:
    fake_openai.script.append(Fault(status=500))

    completion = router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert completion.choices[0].message.content == "You said: hello there"
    assert fake_openai.answered == 2
    assert waits == [0.0]
    [row] = ledger_rows(router)
    assert row.status == "ok" and row.provider == "OpenAI" and row.cost_nanos > 0
    [usage] = router.usage()
    assert (usage.requests, usage.failed) == (1, 0)


@pytest.mark.parametrize(("status", "retry_after"), [(429, 2.5), (503, 2)])
def test_retry_after_is_honoured(
    router: Router,
    api_key: str,
    fake_openai: FakeOpenAI,
    waits: list[float],
    status: int,
    retry_after: float,
) -> None:
    fake_openai.script.append(Fault(status=status, retry_after=retry_after))

    completion = router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert completion.model == GPT
    assert waits == [retry_after]
    assert fake_openai.answered == 2


@pytest.mark.parametrize("retry_after", [MAX_RETRY_WAIT_SECONDS + 1, 120])
@pytest.mark.parametrize("status", [429, 503])
@with_openai(fallbacks=["echo#echo"])
def test_a_retry_after_too_long_to_wait_for_goes_to_the_fallback_at_once(
    router: Router,
    api_key: str,
    fake_openai: FakeOpenAI,
    waits: list[float],
    status: int,
    retry_after: float,
) -> None:
    fake_openai.script.extend([Fault(status=status, retry_after=retry_after)] * 3)

    completion = router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert completion.model == "echo#echo"
    assert waits == []
    assert fake_openai.answered == 1


def test_no_retry_waits_past_the_calls_deadline(
    router: Router, fake_openai: FakeOpenAI, waits: list[float]
) -> None:
    fake_openai.script.extend([Fault(status=503, retry_after=2)] * 3)
    request = ChatRequest.model_validate({"model": GPT, "messages": HELLO})
    targets = [router.catalog.resolve(GPT)]

    with pytest.raises(UpstreamError) as caught:
        router.dispatcher.chat(request, targets, router.directory, deadline=time.monotonic() + 1)

    assert caught.value.upstream_status == 503  # the last error, not a wait
    assert waits == []
    assert fake_openai.answered == 1


def test_no_attempt_starts_once_the_deadline_has_passed(
    router: Router, fake_openai: FakeOpenAI
) -> None:
    request = ChatRequest.model_validate({"model": GPT, "messages": HELLO})
    targets = [router.catalog.resolve(GPT)]

    with pytest.raises(UpstreamTimeoutError, match="deadline"):
        router.dispatcher.chat(request, targets, router.directory, deadline=time.monotonic() - 1)

    assert fake_openai.answered == 0


@with_openai(fallbacks=["echo#echo"])
def test_exhausted_retries_fall_back_and_name_the_fallback(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(status=503)] * 3)

    raw = client.chat.completions.with_raw_response.create(model=GPT, messages=HELLO)

    assert fake_openai.answered == 3  # max_retries = 2
    assert raw.headers["X-LLMRouter-Provider"] == "echo"
    assert raw.parse().model == "echo#echo"
    [row] = ledger_rows(router)
    assert (row.provider, row.model, row.status) == ("echo", "echo#echo", "ok")


def test_upstream_429_with_no_fallback_left_is_our_429(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(status=429)] * 3)

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=GPT, messages=HELLO)

    assert caught.value.status_code == 429
    assert caught.value.code == "upstream_rate_limited"
    assert fake_openai.answered == 3


def test_an_upstream_retry_after_too_long_to_wait_for_reaches_the_client(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(status=429, retry_after=60))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=GPT, messages=HELLO)

    assert fake_openai.answered == 1
    assert caught.value.response.headers.get("Retry-After") == "60"


@with_openai(api_key=WRONG_KEY, fallbacks=["echo#echo"])
def test_a_refused_key_is_not_retried_but_falls_back(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    completion = router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert completion.model == "echo#echo"
    assert fake_openai.answered == 1


@with_openai(api_key=WRONG_KEY)
def test_a_refused_key_without_fallback_is_our_502(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=GPT, messages=HELLO)

    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth_error"
    assert WRONG_KEY not in caught.value.response.text
    assert fake_openai.answered == 1


@with_openai(fallbacks=["echo#echo"])
def test_a_400_is_not_retried_but_a_fallback_may_take_the_request(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(status=400))

    completion = router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert completion.model == "echo#echo"
    assert fake_openai.answered == 1
    assert [(row.provider, row.status) for row in ledger_rows(router)] == [("echo", "ok")]


def test_a_400_with_no_fallback_is_our_400_with_its_message(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(status=400))

    with pytest.raises(UpstreamRejectedError) as caught:
        router.chat(model=GPT, messages=HELLO, api_key=api_key)

    assert caught.value.status == 400
    assert "scripted failure 400" in caught.value.message
    assert fake_openai.answered == 1
    assert [row.status for row in ledger_rows(router)] == ["failed"]


# --------------------------------------------------------------------------- circuit breakers


def two_models(broken_fallbacks: list[str] | None = None, **settings: Any) -> pytest.MarkDecorator:
    """``with_openai`` for a provider with a healthy model (``GPT``) and ``BROKEN``."""
    healthy = gateway_config("http://unused")["providers"][1]["models"][0]
    broken = {**healthy, "id": "gpt-broken", "fallbacks": broken_fallbacks or []}
    return with_openai(models=[healthy, broken], **settings)


def attempts_at(fake_openai: FakeOpenAI, model: str) -> int:
    return sum(1 for body in fake_openai.requests if body["model"] == model)


def remaining_allowance(client: openai.OpenAI) -> int:
    """The key's daily allowance left after one more (echo) request."""
    raw = client.chat.completions.with_raw_response.create(model="echo#echo", messages=HELLO)
    return int(raw.headers["X-RateLimit-Remaining"])


def client_for(live_api: str, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_api + "/v1", api_key=secret, max_retries=0)


@two_models()  # cooldown_after = 3, max_retries = 2, cooldown_seconds = 30
def test_a_failing_model_never_fails_another_keys_requests_to_the_healthy_model(
    client: openai.OpenAI, router: Router, live_api: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(model="gpt-broken", status=500)] * 50)
    victim = client_for(live_api, router.create_key("victim")[1])
    answers: list[tuple[int, str | None, str | None]] = []

    for _ in range(8):
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=BROKEN, messages=HELLO)
        error = caught.value
        answers.append((error.status_code, error.code, error.response.headers.get("Retry-After")))
        assert victim.chat.completions.create(model=GPT, messages=HELLO).model == GPT

    # Open after three requests (nine attempts), not after three attempts.
    assert answers[:3] == [(502, "upstream_error", None)] * 3
    assert [answer[:2] for answer in answers[3:]] == [(503, "provider_cooling_down")] * 5
    assert all(0 < int(retry_after or 0) <= 30 for *_, retry_after in answers[3:])
    assert attempts_at(fake_openai, "gpt-broken") == 9
    assert attempts_at(fake_openai, "gpt-4o-mini") == 8
    assert router.dispatcher.breakers.state("OpenAI", "gpt-broken") is BreakerState.OPEN
    assert router.dispatcher.breakers.state("OpenAI") is BreakerState.CLOSED
    rows = ledger_rows(router)
    assert (
        sorted((row.upstream_model, row.status) for row in rows)
        == [("gpt-4o-mini", "ok")] * 8 + [("gpt-broken", "failed")] * 3
    )  # the 503s are no calls: no row
    # Failed calls and refused ones alike hand the allowance back.
    assert remaining_allowance(client) == router.settings.quota.daily_requests - 1


@two_models(max_retries=0, cooldown_after=2)
def test_streams_breaking_after_their_first_chunk_count_against_their_deployment(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend(
        [Fault(model="gpt-broken", drop_after=2), Fault(model="gpt-broken", end_after=2)]
    )
    for _ in range(2):  # a dropped connection, then a stream ended without finishing
        with pytest.raises(openai.APIError) as caught:
            list(client.chat.completions.create(model=BROKEN, messages=HELLO, stream=True))
        assert caught.value.code == "upstream_error"

    with pytest.raises(openai.APIStatusError) as cooling:
        client.chat.completions.create(model=BROKEN, messages=HELLO, stream=True)

    assert (cooling.value.status_code, cooling.value.code) == (503, "provider_cooling_down")
    assert [row.status for row in ledger_rows(router)] == ["partial", "partial"]
    healthy = client.chat.completions.create(model=GPT, messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in healthy if c.choices)


@two_models(max_retries=0, cooldown_after=1)
def test_cooling_down_hands_a_paid_keys_reservation_back(
    router: Router, live_api: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(model="gpt-broken", status=500)] * 5)
    record, secret = router.create_key("paid", credits="1", daily_requests=0)
    paid = client_for(live_api, secret)
    codes = []
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as caught:
            paid.chat.completions.create(model=BROKEN, messages=HELLO)
        codes.append(caught.value.code)

    assert codes == ["upstream_error"] + ["provider_cooling_down"] * 2
    assert router.store.get_key(record.id).balance_nanos == 10**9
    assert [row.status for row in ledger_rows(router)] == ["failed"]


@pytest.mark.parametrize("status", [400, 404, 422])
@two_models(cooldown_after=1)
def test_a_request_the_provider_refuses_never_opens_anything(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI, status: int
) -> None:
    fake_openai.script.extend([Fault(model="gpt-broken", status=status)] * 10)

    for _ in range(10):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=BROKEN, messages=HELLO)
        assert caught.value.code == "upstream_rejected_request"

    assert attempts_at(fake_openai, "gpt-broken") == 10  # not retried, never skipped
    assert router.dispatcher.breakers.state("OpenAI", "gpt-broken") is BreakerState.CLOSED
    assert client.chat.completions.create(model=GPT, messages=HELLO).model == GPT


@two_models(max_retries=0, cooldown_after=1, cooldown_seconds=0.3)
def test_after_the_cooldown_one_probe_decides(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(model="gpt-broken", status=500)] * 2)

    def answer() -> str:
        try:
            return client.chat.completions.create(model=BROKEN, messages=HELLO).model
        except openai.APIStatusError as exc:
            return str(exc.code)

    assert [answer(), answer()] == ["upstream_error", "provider_cooling_down"]
    time.sleep(0.35)
    assert answer() == "upstream_error"  # the probe failed: open again
    assert answer() == "provider_cooling_down"
    time.sleep(0.35)
    assert [answer(), answer()] == [BROKEN, BROKEN]  # the probe succeeded: closed
    assert attempts_at(fake_openai, "gpt-broken") == 4


@two_models(max_retries=0, cooldown_after=1, broken_fallbacks=[GPT])
def test_a_fallback_tried_beside_an_open_target_answers_with_its_own_failure(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(model="gpt-broken", status=500))
    assert client.chat.completions.create(model=BROKEN, messages=HELLO).model == GPT

    # BROKEN is open now; its fallback is tried and fails: that failure is the answer.
    fake_openai.script.append(Fault(model="gpt-4o-mini", status=500))
    with pytest.raises(openai.APIStatusError) as tried:
        client.chat.completions.create(model=BROKEN, messages=HELLO)
    # Both are open now: nothing is tried.
    with pytest.raises(openai.APIStatusError) as skipped:
        client.chat.completions.create(model=BROKEN, messages=HELLO)

    assert (tried.value.status_code, tried.value.code) == (502, "upstream_error")
    assert (skipped.value.status_code, skipped.value.code) == (503, "provider_cooling_down")
    assert [(row.upstream_model, row.status) for row in ledger_rows(router)] == [
        ("gpt-4o-mini", "ok"),
        ("gpt-broken", "failed"),
    ]


@with_openai(max_retries=0, cooldown_after=2, cooldown_seconds=0.5, fallbacks=["echo#echo"])
def test_a_failing_deployment_cools_down_then_is_tried_again(
    router: Router, api_key: str, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.extend([Fault(status=500)] * 2)

    def served() -> str:
        return router.chat(model=GPT, messages=HELLO, api_key=api_key).model

    assert [served(), served()] == ["echo#echo"] * 2
    assert fake_openai.answered == 2  # two failed requests in a row: open from here
    assert served() == "echo#echo"
    assert fake_openai.answered == 2  # skipped while open

    time.sleep(0.6)
    assert served() == GPT
    assert fake_openai.answered == 3


# --------------------------------------------------------------------------- timeouts


@with_openai(read_timeout=0.2, max_retries=0)
def test_a_read_timeout_is_our_504(client: openai.OpenAI, fake_openai: FakeOpenAI) -> None:
    fake_openai.script.append(Fault(delay=0.6))

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=GPT, messages=HELLO)

    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    # Let the slow answer finish, so that it does not land in the next test's records.
    assert wait_for(lambda: len(fake_openai.requests) == 1)


# --------------------------------------------------------------------------- streams


def test_a_stream_failing_before_its_first_chunk_is_retried(
    client: openai.OpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.script.append(Fault(status=500))

    stream = client.chat.completions.create(model=GPT, messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    assert text == "You said: hello there"
    assert fake_openai.answered == 2


@pytest.mark.parametrize(
    "fault", [Fault(error_event_after=2), Fault(drop_after=2)], ids=["error-event", "dropped"]
)
def test_a_stream_failing_after_chunks_is_not_retried_and_ends_in_an_error(
    client: openai.OpenAI, router: Router, fake_openai: FakeOpenAI, fault: Fault
) -> None:
    fake_openai.script.append(fault)
    received: list[str] = []

    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model=GPT, messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "You said:"
    assert fake_openai.answered == 1
    assert wait_for(lambda: len(ledger_rows(router)) == 1)
    [row] = ledger_rows(router)
    assert row.status == "partial" and row.cost_nanos > 0


# --------------------------------------------------------------------------- unreachable


def closed_loopback_url() -> str:
    """A loopback address nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class TestAnUnreachableUpstream:
    @pytest.fixture
    def openai_settings(self) -> dict[str, Any]:
        return {"base_url": closed_loopback_url()}

    def test_is_our_502_billed_nothing_and_the_allowance_handed_back(
        self, client: openai.OpenAI, router: Router, waits: list[float]
    ) -> None:
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=GPT, messages=HELLO)

        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_error"
        assert len(waits) == 2  # retried like any broken connection
        [row] = ledger_rows(router)
        assert (row.status, row.cost_nanos, row.charged_nanos) == ("failed", 0, 0)
        assert (row.prompt_tokens, row.completion_tokens) == (0, 0)

        raw = client.chat.completions.with_raw_response.create(model="echo#echo", messages=HELLO)
        allowance = router.settings.quota.daily_requests
        assert raw.headers["X-RateLimit-Remaining"] == str(allowance - 1)


class TestAnUnreachableUpstreamWithTwoModels:
    @pytest.fixture
    def openai_settings(self) -> dict[str, Any]:
        healthy = gateway_config("http://unused")["providers"][1]["models"][0]
        return {
            "base_url": closed_loopback_url(),
            "models": [healthy, {**healthy, "id": "gpt-broken"}],
            "cooldown_after": 2,
            "max_retries": 0,
        }

    def test_opens_the_provider_wide_breaker_for_every_model(
        self, client: openai.OpenAI, router: Router
    ) -> None:
        codes = []
        for model in (BROKEN, GPT, GPT, BROKEN):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model=model, messages=HELLO)
            codes.append((caught.value.status_code, caught.value.code))

        assert codes == [(502, "upstream_error")] * 2 + [(503, "provider_cooling_down")] * 2
        assert router.dispatcher.breakers.state("OpenAI") is BreakerState.OPEN
        assert [row.status for row in ledger_rows(router)] == ["failed"] * 2
