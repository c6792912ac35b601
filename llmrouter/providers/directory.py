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
    built, whatever the error, or whose models the catalog refuses (a fallback to nowhere,
    an alias of the config file made ambiguous) is left out and logged (``skipped`` says
    which and why, never with a secret), so a bad row never breaks the snapshot. An
    adapter of ``previous`` whose settings are unchanged is taken over, with its open
    connections; the others are dropped, not closed, so the calls still running on them
    finish.
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
            routable: list[ProviderSettings] = []
            for connection in connections:
                if connection.name.lower() in taken:
                    self._skip(connection.name, "its name is taken by a config provider")
                    continue
                try:
                    adapters[connection.name] = adapter_of(connection)
                except Exception as exc:  # whatever a row holds, the others route
                    reason = exc.message if isinstance(exc, ConfigError) else type(exc).__name__
                    self._skip(connection.name, reason)
                    continue
                routable.append(connection)
            self.catalog = self._catalog(providers, routable, aliases)
        except BaseException:
            for adapter in built:
                adapter.close()
            raise
        for name in self.skipped:  # left out by the catalog after its adapter was made
            dropped = adapters.pop(name, None)
            if dropped is not None and any(dropped is adapter for adapter in built):
                dropped.close()  # a taken-over one may still serve calls of ``previous``
        self.providers = tuple(providers) + tuple(c for c in routable if c.name not in self.skipped)
        self.connection_names = frozenset(c.name for c in routable) - set(self.skipped)
        self._adapters = adapters
        #: providers of ``previous`` whose adapter this snapshot did not take over (changed
        #: or gone): what the dispatcher learnt about them (its breakers) is stale
        self.replaced = frozenset(
            name
            for name, adapter in (previous._adapters.items() if previous else ())
            if adapters.get(name) is not adapter
        )
        self._settings = {p.name: p for p in self.providers}
        self._policies = {p.name: TargetPolicy.of(p) for p in self.providers}
        self._defaults = {p.name: p.request_defaults.fields() for p in self.providers}

    def _catalog(
        self,
        providers: Sequence[ProviderSettings],
        connections: list[ProviderSettings],
        aliases: Mapping[str, str],
    ) -> ModelCatalog:
        """The catalog of every provider; a connection whose models it refuses (a fallback
        to nowhere, an alias made ambiguous) is left out, the first one found first."""
        try:
            return ModelCatalog(
                [*providers, *connections], aliases, qualified_only=_names(connections)
            )
        except ConfigError:
            if not connections:
                raise  # the config file's own: the Router does not start
        catalog = ModelCatalog(providers, aliases)
        kept: list[ProviderSettings] = []
        for connection in connections:
            try:
                catalog = ModelCatalog(
                    [*providers, *kept, connection],
                    aliases,
                    qualified_only=_names([*kept, connection]),
                )
            except ConfigError as exc:
                self._skip(connection.name, exc.message)
                continue
            kept.append(connection)
        return catalog

    def _skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        log.warning("provider connection '%s' left out: %s", name, reason)

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


def _names(providers: Sequence[ProviderSettings]) -> frozenset[str]:
    return frozenset(p.name for p in providers)
