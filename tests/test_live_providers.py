"""Real providers over the internet: off by default, opt in with ``pytest -m live``.

Each test also needs its provider's key in the environment and skips without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from llmrouter import Router

pytestmark = pytest.mark.live

LIVE = [
    pytest.param("openai", "OPENAI_API_KEY", "gpt-4o-mini", id="openai"),
    pytest.param("anthropic", "ANTHROPIC_API_KEY", "claude-haiku-4-5", id="anthropic"),
    pytest.param("gemini", "GEMINI_API_KEY", "gemini-2.5-flash", id="gemini"),
    pytest.param("mistral", "MISTRAL_API_KEY", "mistral-small-latest", id="mistral"),
]


@pytest.mark.parametrize(("kind", "env", "model"), LIVE)
def test_a_real_provider_answers_and_is_billed(
    make_router: Callable[..., Router], kind: str, env: str, model: str
) -> None:
    if not os.environ.get(env):
        pytest.skip(f"{env} is not set")
    router = make_router(
        {
            "database_url": "sqlite://",
            "providers": [
                {
                    "name": "Live",
                    "kind": kind,
                    "api_key_env": env,
                    "models": [
                        {"id": model, "prompt_price": "0.000001", "completion_price": "0.000001"}
                    ],
                }
            ],
        }
    )
    key = router.create_key("live")[1]
    messages = [{"role": "user", "content": "Reply with the single word: pong"}]
    reply = router.chat(model=f"Live#{model}", messages=messages, api_key=key, max_tokens=20)
    assert "pong" in (reply.choices[0].message.content or "").lower()
    streamed = router.chat(
        model=f"Live#{model}", messages=messages, api_key=key, max_tokens=20, stream=True
    )
    assert (
        "pong" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).lower()
    )
    assert sum(row.requests for row in router.usage()) == 2
