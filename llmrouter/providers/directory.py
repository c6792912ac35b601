"""The provider directory: one immutable snapshot of what a Router routes to.

A snapshot holds the providers' settings, their adapters, the model catalog built from
them, the retry and breaker policy of each, and a version. The Router reads the current
snapshot once per request and uses only it for that request, so a request never sees half
of a change; a change is a new snapshot, swapped in one step. Breaker state is not in a
snapshot: it belongs to the dispatcher and outlives them (keyed by provider and model).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..breakers import BreakerPolicy
from ..config import ProviderSettings
from ..errors import ConfigError
from ..naming import ModelCatalog
from .base import ProviderAdapter
from .registry import build_adapter

log = logging.getLogger("llmrouter")


@dataclass(frozen=True)
class TargetPolicy:
    """How one provider's targets are retried and when their breakers open."""

    max_retries: int
    retry_backoff: float
    breaker: BreakerPolicy

    @classmethod
    def of(cls, settings: ProviderSettings) -> TargetPolicy:
        return cls(
            max_retries=settings.max_retries,
            retry_backoff=settings.retry_backoff,
            breaker=BreakerPolicy(settings.cooldown_after, settings.cooldown_seconds),
        )


class ProviderDirectory:
    """Providers, adapters, catalog and policies, as of ``version``. Never changed.

    ``providers`` come from the config file: one that cannot be built is a ``ConfigError``
    (the Router does not start). ``connections`` come from the store: one that cannot be
    built is left out and logged (``skipped`` says which and why), so a bad row never
    breaks the snapshot. An adapter of ``previous`` whose settings are unchanged is taken
    over, with its open connections; the others are dropped, not closed, so the calls
    still running on them finish.
    """

    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        aliases: Mapping[str, str],
        *,
        connections: Sequence[ProviderSettings] = (),
        version: int = 0,
        previous: ProviderDirectory | None = None,
    ) -> None:
        self.version = version
        self.skipped: dict[str, str] = {}
        adapters: dict[str, ProviderAdapter] = {}
        built: list[ProviderAdapter] = []

        def adapter_of(provider: ProviderSettings) -> ProviderAdapter:
            if previous is not None and previous._settings.get(provider.name) == provider:
                return previous._adapters[provider.name]
            adapter = build_adapter(provider)
            built.append(adapter)
            return adapter

        try:
            for index, provider in enumerate(providers):
                try:
                    adapters[provider.name] = adapter_of(provider)
                except ConfigError as exc:
                    raise exc.at("", f"providers[{index}]({provider.name})") from None
            taken = {n.lower() for p in providers for n in (p.name, *p.aliases)}
            for connection in connections:
                if connection.name.lower() in taken:
                    self.skipped[connection.name] = "the name is a config provider's"
                    log.warning(
                        "provider connection '%s' left out: its name is taken by a config provider",
                        connection.name,
                    )
                    continue
                try:
                    adapters[connection.name] = adapter_of(connection)
                except ConfigError as exc:
                    self.skipped[connection.name] = exc.message
                    log.warning("provider connection '%s' left out: %s", connection.name, exc)
        except BaseException:
            for adapter in built:
                adapter.close()
            raise
        self.providers = tuple(providers) + tuple(
            c for c in connections if c.name not in self.skipped
        )
        self.connection_names = frozenset(c.name for c in connections) - set(self.skipped)
        self.catalog = ModelCatalog(self.providers, aliases)
        self._adapters = adapters
        self._settings = {p.name: p for p in self.providers}
        self._policies = {p.name: TargetPolicy.of(p) for p in self.providers}
        self._defaults = {p.name: p.request_defaults.fields() for p in self.providers}

    @property
    def adapters(self) -> Mapping[str, ProviderAdapter]:
        return self._adapters

    def adapter(self, provider: str) -> ProviderAdapter:
        return self._adapters[provider]

    def policy(self, provider: str) -> TargetPolicy:
        """The one place a provider's retry and breaker settings are read."""
        return self._policies[provider]

    def request_defaults(self, provider: str) -> dict[str, object]:
        """The request fields ``provider`` applies when a request does not set them."""
        return self._defaults[provider]

    def close(self) -> None:
        """Release the adapters' connections (when the Router closes)."""
        for adapter in self._adapters.values():
            adapter.close()
