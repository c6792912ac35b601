"""Provider kinds by name, and the factory that builds an adapter from its settings.

Built-in kinds are imported lazily, so a kind's module loads only when configured.
"""

from __future__ import annotations

import importlib

from ..config import ProviderSettings
from ..errors import ConfigError
from .base import ProviderAdapter

_BUILTIN_MODULES = {
    "echo": "llmrouter.providers.echo",
    "openai": "llmrouter.providers.openai",
    "openai-compatible": "llmrouter.providers.openai",
    "anthropic": "llmrouter.providers.anthropic",
    "gemini": "llmrouter.providers.gemini",
    "mistral": "llmrouter.providers.mistral",
    "ark": "llmrouter.providers.ark",
    "openrouter": "llmrouter.providers.openrouter_video",
}
_REGISTRY: dict[str, type[ProviderAdapter]] = {}


def register(cls: type[ProviderAdapter]) -> type[ProviderAdapter]:
    """Class decorator: make ``cls`` buildable under its ``kind``."""
    _REGISTRY[cls.kind] = cls
    return cls


def known_kinds() -> list[str]:
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY))


def adapter_class(kind: str) -> type[ProviderAdapter]:
    if kind not in _REGISTRY and kind in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[kind])
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            f"unknown provider kind '{kind}'; known kinds: {', '.join(known_kinds())}",
            key="kind",
        ) from None


def build_adapter(settings: ProviderSettings) -> ProviderAdapter:
    return adapter_class(settings.kind)(settings)
