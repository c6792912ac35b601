"""The fault matrix: every kind of upstream misbehaving on command, streamed and not, for a
free key and a paid one, through the HTTP API with the ``openai`` SDK as the client.

Each cell checks what the client gets (status and error code; after the first chunk, an
error event in the stream), the ledger row and its charge, the key's allowance and balance
afterwards, and that the failing model, the healthy model beside it and another key all
serve right after. ``EXPECTED`` is the README's table: ``python -m tests.test_fault_matrix``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from flask import Flask
from sqlalchemy import select

from flask_ext import LLMRouter
from llmrouter import Router
from llmrouter.store.tables import api_keys, ledger
from tests.upstreams import anthropic_server, gemini_server, mistral_server
from tests.upstreams.faults import Fault
from tests.upstreams.loopback import LoopbackServer
from tests.upstreams.openai_server import FakeOpenAI

#: stands for "after the first content chunk" in a stream fault; each kind counts its own
FIRST = -1
READ_TIMEOUT = 0.2
MAX_ANSWER_BYTES = 1024


@dataclass(frozen=True)
class Outcome:
    """What one request that meets the fault ends in."""

    status: int  # the client's HTTP status (200: the stream had started)
    code: str | None  # the error code, of the body or of the stream's error event
    row: str  # the ledger row's status
    billed: bool = False  # charged for what was delivered; else charged 0, allowance back
    retry_after: str | None = None  # the Retry-After the client gets
    waited: float | None = None  # the dispatcher waited this before its retry
    estimated: bool = False  # the row says its usage is the router's estimate


@dataclass(frozen=True)
class Case:
    label: str
    plain: Fault | None  # None: the fault has no unstreamed form
    streamed: Fault
    plain_outcome: Outcome | None
    streamed_outcome: Outcome


BROKEN = Outcome(502, "upstream_error", "failed")
PARTIAL = Outcome(200, "upstream_error", "partial", billed=True)
RATE_LIMITED = Outcome(429, "upstream_rate_limited", "failed")


def same(label: str, fault: Fault, outcome: Outcome) -> Case:
    return Case(label, fault, fault, outcome, outcome)


# The expectations of issue 7: a failed call is billed nothing and hands its allowance back;
# a stream broken after its first chunk is ``partial``, billed for what was delivered, and
# ends in an error event; upstream 400/404 are the request's fault (400), 401 is ours (502).
EXPECTED: list[Case] = [
    same("500", Fault(status=500), BROKEN),
    same("500 + Retry-After", Fault(status=500, retry_after=2), BROKEN),
    same("503", Fault(status=503), BROKEN),
    same(
        "503 + Retry-After",
        Fault(status=503, retry_after=2),
        dataclasses.replace(BROKEN, waited=2.0),
    ),
    same("429", Fault(status=429), RATE_LIMITED),
    same(
        "429 + Retry-After",
        Fault(status=429, retry_after=2),
        dataclasses.replace(RATE_LIMITED, retry_after="2", waited=2.0),
    ),
    same("401", Fault(status=401), Outcome(502, "upstream_auth_error", "failed")),
    same("400", Fault(status=400), Outcome(400, "upstream_rejected_request", "failed")),
    same("404", Fault(status=404), Outcome(400, "upstream_rejected_request", "failed")),
    same(
        f"hang past read_timeout ({READ_TIMEOUT} s)",
        Fault(delay=READ_TIMEOUT * 2.5),
        Outcome(504, "upstream_timeout", "failed"),
    ),
    Case(
        "connection reset mid-body",
        Fault(reset_mid_body=True),
        Fault(drop_after=FIRST),
        BROKEN,
        PARTIAL,
    ),
    Case("error event mid-stream", None, Fault(error_event_after=FIRST), None, PARTIAL),
    Case("stream cut before [DONE] / end event", None, Fault(end_after=FIRST), None, PARTIAL),
    Case(
        "malformed JSON (body; stream event)",
        Fault(raw='{"id": "cut", "choices": [{"message": '),
        Fault(malformed_after=FIRST),
        BROKEN,
        PARTIAL,
    ),
    same(
        f"answer over max_answer_bytes ({MAX_ANSWER_BYTES})",
        Fault(padding=4 * MAX_ANSWER_BYTES),
        BROKEN,
    ),
    same(
        "usage missing", Fault(no_usage=True), Outcome(200, None, "ok", billed=True, estimated=True)
    ),
    same("wrong content type (200 text/html)", Fault(content_type="text/html"), BROKEN),
]


# --------------------------------------------------------------------------- the upstreams


@dataclass(frozen=True)
class Upstream:
    """One provider of the matrix: its kind, its failing and healthy models, and the
    stream events its fake sends up to the first content chunk."""

    name: str
    kind: str
    failing: str
    healthy: str
    first_chunk: int


UPSTREAMS = [
    Upstream("OpenAI", "openai", "gpt-4o-mini", "gpt-4o", 1),
    Upstream("Compat", "openai-compatible", "local-failing", "local-healthy", 1),
    Upstream("Anthropic", "anthropic", "claude-sonnet-4-5", "claude-haiku-4-5", 4),
    Upstream("Gemini", "gemini", "gemini-2.5-flash", "gemini-2.0-flash", 1),
    Upstream("Mistral", "mistral", "mistral-small-latest", "mistral-large-latest", 1),
]
PROMPT = [{"role": "user", "content": "one two three four five six seven eight"}]
PRICES = {"prompt_price": "0.000001", "completion_price": "0.000002", "max_output_length": 512}


@dataclass
class Fakes:
    openai: FakeOpenAI
    anthropic: anthropic_server.FakeAnthropic
    gemini: gemini_server.FakeGemini
    mistral: mistral_server.FakeMistral
    urls: dict[str, str]

    def of(self, kind: str) -> Any:
        return self.openai if kind.startswith("openai") else getattr(self, kind)

    def reset(self) -> None:
        for fake in (self.openai, self.anthropic, self.gemini, self.mistral):
            fake.reset()


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    openai_fake = FakeOpenAI()
    anthropic_fake = anthropic_server.FakeAnthropic()
    gemini_fake = gemini_server.FakeGemini()
    mistral_fake = mistral_server.FakeMistral()
    with (
        LoopbackServer(openai_fake.app()) as openai_up,
        LoopbackServer(anthropic_fake) as anthropic_up,
        LoopbackServer(gemini_fake.app) as gemini_up,
        LoopbackServer(mistral_fake.app()) as mistral_up,
    ):
        urls = {
            "openai": openai_up.url + "/v1",
            "openai-compatible": openai_up.url + "/v1",
            "anthropic": anthropic_up.url,
            "gemini": gemini_up.url + "/v1beta",
            "mistral": mistral_up.url + "/v1",
        }
        yield Fakes(openai_fake, anthropic_fake, gemini_fake, mistral_fake, urls)


def provider_config(upstream: Upstream, fakes: Fakes) -> dict[str, Any]:
    keys = {
        "openai": fakes.openai.api_key,
        "openai-compatible": fakes.openai.api_key,
        "anthropic": anthropic_server.TEST_KEY,
        "gemini": gemini_server.API_KEY,
        "mistral": mistral_server.API_KEY,
    }
    return {
        "name": upstream.name,
        "kind": upstream.kind,
        "base_url": fakes.urls[upstream.kind],
        "api_key": keys[upstream.kind],
        "read_timeout": READ_TIMEOUT,
        "max_retries": 1,
        "retry_backoff": 0,
        # Two failed requests stay below it: a failure must count once per request.
        "cooldown_after": 3,
        "max_answer_bytes": MAX_ANSWER_BYTES,
        "models": [{"id": upstream.failing, **PRICES}, {"id": upstream.healthy, **PRICES}],
    }


@dataclass
class Gateway:
    router: Router
    url: str
    waits: list[float]
    sdk: openai.OpenAI

    def client(self, secret: str) -> openai.OpenAI:
        return self.sdk.with_options(base_url=self.url + "/v1", api_key=secret)

    def key_state(self, key_id: str) -> tuple[int, int]:
        """The key's allowance used today and its balance, as stored."""
        with self.router.store.transaction() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
        return row.day_count, row.balance_nanos

    def last_row(self, key_id: str) -> Any:
        """The key's latest ledger row, once settled (a stream settles as it closes)."""
        deadline = time.monotonic() + 5
        while True:
            with self.router.store.transaction() as conn:
                query = select(ledger).where(ledger.c.key_id == key_id).order_by(ledger.c.id)
                rows = conn.execute(query).all()
            if (rows and rows[-1].status != "pending") or time.monotonic() > deadline:
                return rows[-1] if rows else None
            time.sleep(0.01)


@pytest.fixture(scope="module")
def sdk() -> openai.OpenAI:
    """One SDK client for the module: building one takes longer than a request."""
    return openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0)


@pytest.fixture
def gateway(fakes: Fakes, sdk: openai.OpenAI) -> Iterator[Gateway]:
    """A Router of its own per cell (fresh breakers), in front of the module's fakes."""
    fakes.reset()
    waits: list[float] = []
    config = {
        "database_url": "sqlite://",
        "providers": [provider_config(upstream, fakes) for upstream in UPSTREAMS],
    }
    router = Router.from_config(config, sleep=waits.append)
    app = Flask("fault-matrix")
    LLMRouter(app, router=router)
    try:
        with LoopbackServer(app) as server:
            yield Gateway(router, server.url, waits, sdk)
    finally:
        router.close()


# --------------------------------------------------------------------------- one request


@dataclass
class Answer:
    status: int
    code: str | None
    text: str
    headers: dict[str, str]


def ask(client: openai.OpenAI, model: str, streamed: bool) -> Answer:
    """One request as the SDK sees it: its status, error code, text and headers."""
    text = ""
    try:
        if not streamed:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=PROMPT)
            completion = raw.parse()
            return Answer(200, None, completion.choices[0].message.content or "", dict(raw.headers))
        with client.chat.completions.with_streaming_response.create(
            model=model, messages=PROMPT, stream=True
        ) as response:
            headers = dict(response.headers)
            try:
                for chunk in response.parse():
                    text += "".join(choice.delta.content or "" for choice in chunk.choices)
            except openai.APIError as exc:  # an error event: the stream had started
                return Answer(200, exc.code, text, headers)
            return Answer(200, None, text, headers)
    except openai.APIStatusError as exc:
        return Answer(exc.status_code, exc.code, text, dict(exc.response.headers))


# --------------------------------------------------------------------------- the matrix


def cells() -> Iterator[Any]:
    for upstream in UPSTREAMS:
        for case in EXPECTED:
            for streamed in (False, True):
                if (case.streamed if streamed else case.plain) is None:
                    continue
                mode = "streamed" if streamed else "plain"
                name = f"{upstream.name}-{case.label}-{mode}"
                yield pytest.param(upstream, case, streamed, id=name)


@pytest.mark.parametrize(("upstream", "case", "streamed"), list(cells()))
def test_fault(
    gateway: Gateway, fakes: Fakes, upstream: Upstream, case: Case, streamed: bool
) -> None:
    fault = case.streamed if streamed else case.plain
    expected = case.streamed_outcome if streamed else case.plain_outcome
    assert fault is not None and expected is not None
    fault = dataclasses.replace(
        fault,
        model=upstream.failing,
        **{
            name: upstream.first_chunk
            for name in ("drop_after", "error_event_after", "end_after", "malformed_after")
            if getattr(fault, name) == FIRST
        },
    )
    failing, healthy = f"{upstream.name}#{upstream.failing}", f"{upstream.name}#{upstream.healthy}"
    router, script = gateway.router, fakes.of(upstream.kind).script
    free_key, free = router.create_key("free")
    paid_key, paid = router.create_key("paid", daily_requests=0, credits="1")

    for key_id, secret, paying in ((free_key.id, free, False), (paid_key.id, paid, True)):
        before = gateway.key_state(key_id)
        gateway.waits.clear()
        script.extend([fault, fault])  # the first attempt and its one retry
        answer = ask(gateway.client(secret), failing, streamed)
        script.clear()

        who = "paid" if paying else "free"
        assert (answer.status, answer.code) == (expected.status, expected.code), who
        if expected.status == 200 and expected.code:
            assert answer.text, f"{who}: the first chunk reached the client before the error"
        if expected.retry_after is not None:
            assert answer.headers.get("retry-after") == expected.retry_after, who
        if expected.waited is not None:
            assert gateway.waits == [expected.waited], who
        row = gateway.last_row(key_id)
        assert row is not None, f"{who}: no ledger row"
        assert row.status == expected.row, who
        if expected.estimated:
            assert row.usage_estimated, f"{who}: usage estimated"
        used, balance = gateway.key_state(key_id)
        if expected.billed:
            assert row.cost_nanos > 0, who
            assert row.charged_nanos == (row.cost_nanos if paying else 0), who
            # The paid key draws on credits, the free one on its allowance.
            assert (used, balance) == (before[0] + (not paying), before[1] - row.charged_nanos), who
        else:
            assert (row.cost_nanos, row.charged_nanos) == (0, 0), who
            assert (used, balance) == before, f"{who}: allowance and reservation handed back"

    # Right after, another key is served by the healthy model beside the failing one, and by
    # the failing model itself: two failed requests are below cooldown_after.
    _, other = router.create_key("other")
    for secret, model in ((other, healthy), (other, failing)):
        after = ask(gateway.client(secret), model, streamed)
        assert (after.status, after.code) == (200, None), model
        assert after.text.startswith(("one", "You said: one")), after.text


# --------------------------------------------------------------------------- the README table


def _describe(outcome: Outcome | None) -> str:
    if outcome is None:
        return "—"
    if outcome.status == 200 and outcome.code:
        said = f"200, then an error event `{outcome.code}`"
    elif outcome.code:
        said = f"{outcome.status} `{outcome.code}`"
    else:
        said = "200"
    if outcome.retry_after:
        said += f", Retry-After {outcome.retry_after}"
    if outcome.waited:
        said += " (retried after the upstream's Retry-After)"
    if outcome.billed:
        money = "billed for what was delivered" + (" (usage estimated)" * outcome.estimated)
    else:
        money = "charged 0, allowance and reservation handed back"
    return f"{said}; ledger row `{outcome.row}`, {money}"


def markdown_table() -> str:
    lines = [
        "Every kind of provider (openai, openai-compatible, anthropic, gemini, mistral), with",
        f"`max_retries = 1`, `read_timeout = {READ_TIMEOUT}`, `cooldown_after = 3`; a free key",
        "(within its allowance: charged 0, the allowance counts what was billed) and a paid",
        "key (past it: charged the cost from its credits). In every cell another key is",
        "served right after by the healthy model beside the failing one and by the failing",
        "model itself. A streamed failure before the first chunk is an HTTP error.",
        "",
        "| Upstream fault | Not streamed | Streamed |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {case.label} | {_describe(case.plain_outcome)} | {_describe(case.streamed_outcome)} |"
        for case in EXPECTED
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
