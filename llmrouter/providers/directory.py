"""The provider directory: one immutable snapshot of what a Router routes to.

A snapshot holds the providers' settings, their adapters, the model catalog built from
them, the retry and breaker policy of each, and a version. The Router reads the current
snapshot once per request and uses only it for that request, so a request never sees half
of a change; a change is a new snapshot, swapped in one step. Breaker state is not in a
snapshot: it belongs to the dispatcher and outlives them (keyed by provider and model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..breakers import BreakerPolicy
from ..config import ProviderSettings
from ..errors import ConfigError
from ..naming import ModelCatalog
from .base import ProviderAdapter
from .registry import build_adapter


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
    """Providers, adapters, catalog and policies, as of ``version``. Never changed."""

    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        aliases: Mapping[str, str],
        *,
        version: int = 0,
    ) -> None:
        self.version = version
        self.providers = tuple(providers)
        self.catalog = ModelCatalog(self.providers, aliases)
        adapters: dict[str, ProviderAdapter] = {}
        try:
            for index, provider in enumerate(self.providers):
                try:
                    adapters[provider.name] = build_adapter(provider)
                except ConfigError as exc:
                    raise exc.at("", f"providers[{index}]({provider.name})") from None
        except BaseException:
            for adapter in adapters.values():
                adapter.close()
            raise
        self._adapters = adapters
        self._policies = {p.name: TargetPolicy.of(p) for p in self.providers}

    @property
    def adapters(self) -> Mapping[str, ProviderAdapter]:
        return self._adapters

    def adapter(self, provider: str) -> ProviderAdapter:
        return self._adapters[provider]

    def policy(self, provider: str) -> TargetPolicy:
        """The one place a provider's retry and breaker settings are read."""
        return self._policies[provider]

    def close(self) -> None:
        """Release the adapters' connections (when the snapshot is retired)."""
        for adapter in self._adapters.values():
            adapter.close()
