"""Fixtures for video tasks: the fake Ark and OpenRouter upstreams on loopback (one server
each per session, emptied for every test) and adapters built on them.

A test module uses them by naming this module as its plugin (importing nothing from it)::

    pytest_plugins = ["tests.video_fixtures"]

``fake_ark.provider()`` and ``fake_openrouter.provider()`` give a Router's provider entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmrouter.config import ProviderSettings
from llmrouter.providers.registry import build_adapter
from llmrouter.providers.video_base import VideoAdapter
from tests.upstreams.ark_server import FakeArk, serve_fake_ark
from tests.upstreams.openrouter_server import FakeOpenRouter, serve_fake_openrouter

ARK_KEY = "ark-upstream-test-0123456789abcdef"
OPENROUTER_KEY = "sk-or-v1-upstream-test-0123456789abcdef"

AdapterFactory = Callable[..., VideoAdapter]


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


def _factory(provider: Callable[..., dict[str, Any]]) -> Iterator[AdapterFactory]:
    built: list[VideoAdapter] = []

    def build(**overrides: Any) -> VideoAdapter:
        adapter = build_adapter(ProviderSettings.model_validate(provider(**overrides)))
        assert isinstance(adapter, VideoAdapter)
        built.append(adapter)
        return adapter

    yield build
    for adapter in built:
        adapter.close()


@pytest.fixture
def make_ark_adapter(fake_ark: FakeArk) -> Iterator[AdapterFactory]:
    """Builds ark adapters on the fake, provider settings overridden (closed after the test)."""
    yield from _factory(fake_ark.provider)


@pytest.fixture
def make_openrouter_adapter(fake_openrouter: FakeOpenRouter) -> Iterator[AdapterFactory]:
    yield from _factory(fake_openrouter.provider)


@pytest.fixture
def ark_adapter(make_ark_adapter: AdapterFactory) -> VideoAdapter:
    return make_ark_adapter()


@pytest.fixture
def openrouter_adapter(make_openrouter_adapter: AdapterFactory) -> VideoAdapter:
    return make_openrouter_adapter()
