"""The offline echo provider's video tasks: what a host app's unit tests (and the README)
run without any upstream — a task made, polled to success, charged exactly, the
reservation's rest handed back."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal

import pytest

from llmrouter import InvalidRequestError, NotFoundError, Router

PRICE = Decimal("0.0000012")
CONFIG = {
    "database_url": "sqlite://",
    "secret_key": "test-secret",
    "video_poll_seconds": 0.001,
    "providers": [
        {
            "name": "echo",
            "kind": "echo",
            "models": [
                {"id": "echo"},
                {
                    "id": "echo-video",
                    "output_modalities": ["video"],
                    "resolutions": ["480p", "720p"],
                    "min_duration": 2,
                    "max_duration": 10,
                    "completion_price": str(PRICE),
                },
            ],
        }
    ],
}


@pytest.fixture
def router() -> Iterator[Router]:
    made = Router.from_config(CONFIG)
    yield made
    made.close()


def test_an_echo_video_task_succeeds_offline_and_is_charged_exactly(router: Router) -> None:
    record, secret = router.create_key("host", credits="1")
    key = router.authenticate(secret)

    task = router.video.create(
        {"model": "echo#echo-video", "prompt": "a cat", "duration": 4, "resolution": "720p"},
        caller=key,
    )
    assert task.view()["status"] == "queued"
    done = router.video.get(task.status_token, caller=key).view()

    tokens = math.ceil(1280 * 720 * 24 * 4 / 1024)  # Ark's formula at 24 fps
    expected = PRICE * tokens
    assert done["status"] == "succeeded" and done["video_url"].endswith(".mp4")
    assert Decimal(done["reserved"]) == Decimal(done["charged"]) == expected
    assert router.get_key(record.id).balance_nanos == int((Decimal(1) - expected) * 10**9)
    (row,) = router.usage(key_id=record.id)
    assert (row.requests, row.charged_nanos) == (1, int(expected * 10**9))
    other = router.authenticate(router.create_key("other", credits="1")[1])
    with pytest.raises(NotFoundError) as foreign:
        router.video.get(task.status_token, caller=other)
    assert foreign.value.code == "task_not_found"


def test_a_video_model_is_no_chat_model_and_a_chat_model_no_video_model(router: Router) -> None:
    secret = router.create_key("host", credits="1")[1]
    with pytest.raises(InvalidRequestError) as chat:
        router.chat(
            model="echo#echo-video", messages=[{"role": "user", "content": "hi"}], api_key=secret
        )
    assert chat.value.param == "model"
    with pytest.raises(InvalidRequestError) as video:
        router.video.create(
            {"model": "echo#echo", "prompt": "a cat"}, caller=router.authenticate(secret)
        )
    assert video.value.code == "not_a_video_model"


def test_a_prompt_no_database_can_hold_is_a_400_naming_it(router: Router) -> None:
    key = router.authenticate(router.create_key("host", credits="1")[1])
    with pytest.raises(InvalidRequestError) as refused:
        router.video.create({"model": "echo#echo-video", "prompt": "a \ud800 cat"}, caller=key)
    assert refused.value.param == "prompt"
    assert router.video.list(caller=key) == []
