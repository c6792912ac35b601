"""Fixtures for video tasks: the fake Ark and OpenRouter upstreams on loopback (one server
each per session, emptied for every test) and adapters built on them.

Use them by importing the fixtures into a test module::

    from tests.video_fixtures import ark_adapter, fake_ark  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from llmrouter.config import ProviderSettings
from llmrouter.providers.registry import build_adapter
from llmrouter.providers.video_base import VideoAdapter
from tests.upstreams.ark_server import FakeArk, serve_fake_ark
from tests.upstreams.openrouter_server import FakeOpenRouter, serve_fake_openrouter

ARK_KEY = "ark-upstream-test-0123456789abcdef"
OPENROUTER_KEY = "sk-or-v1-upstream-test-0123456789abcdef"


@pytest.fixture(scope="session")
def _ark_server() -> Iterator[FakeArk]:
    fake, server = serve_fake_ark(api_key=ARK_KEY)
    with server:
        yield fake


@pytest.fixture
def fake_ark(_ark_server: FakeArk) -> FakeArk:
    """The fake Ark upstream, its tasks, script and records emptied for this test."""
    _ark_server.reset()
    return _ark_server


@pytest.fixture(scope="session")
def _openrouter_server() -> Iterator[FakeOpenRouter]:
    fake, server = serve_fake_openrouter(api_key=OPENROUTER_KEY)
    with server:
        yield fake


@pytest.fixture
def fake_openrouter(_openrouter_server: FakeOpenRouter) -> FakeOpenRouter:
    """The fake OpenRouter video upstream, emptied for this test."""
    _openrouter_server.reset()
    return _openrouter_server


def ark_provider(fake: FakeArk, **overrides: Any) -> dict[str, Any]:
    """A ``[[providers]]`` entry of kind ark on ``fake`` (a dict, for a Router's config)."""
    return {
        "name": "Ark",
        "kind": "ark",
        "base_url": fake.base_url,
        "api_key": ARK_KEY,
        **overrides,
    }


def openrouter_provider(fake: FakeOpenRouter, **overrides: Any) -> dict[str, Any]:
    """A ``[[providers]]`` entry of kind openrouter on ``fake``."""
    return {
        "name": "OpenRouter",
        "kind": "openrouter",
        "base_url": fake.base_url,
        "api_key": OPENROUTER_KEY,
        **overrides,
    }


def video_adapter(provider: dict[str, Any]) -> VideoAdapter:
    adapter = build_adapter(ProviderSettings.model_validate(provider))
    assert isinstance(adapter, VideoAdapter)
    return adapter


@pytest.fixture
def ark_adapter(fake_ark: FakeArk) -> Iterator[VideoAdapter]:
    adapter = video_adapter(ark_provider(fake_ark))
    yield adapter
    adapter.close()


@pytest.fixture
def openrouter_adapter(fake_openrouter: FakeOpenRouter) -> Iterator[VideoAdapter]:
    adapter = video_adapter(openrouter_provider(fake_openrouter))
    yield adapter
    adapter.close()
