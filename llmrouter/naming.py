"""``Provider#Model`` names: resolution, aliases, bare ids, and the public model cards."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from .billing import price_string
from .config import ModelSettings, ProviderSettings
from .errors import ConfigError, InvalidRequestError, ModelNotFoundError
from .price_table import table_price
from .schemas import ModelCard, Pricing, VideoTerms

#: the longest names the ledger's columns take: a whole name, and its model id
MAX_MODEL_NAME = 300
MAX_MODEL_ID = 200


@dataclass(frozen=True)
class Target:
    """Where a request goes: a provider, the model id it knows, and the model's terms."""

    provider: str
    upstream_model: str
    model: ModelSettings

    @property
    def public_id(self) -> str:
        return f"{self.provider}#{self.upstream_model}"


class ModelCatalog:
    """Every model name a client may send, resolved to a ``Target``."""

    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        aliases: Mapping[str, str],
        *,
        qualified_only: Collection[str] = (),
    ) -> None:
        """``qualified_only``: providers whose models answer only to ``Provider#Model``
        (connections made at run time: adding one must never make a bare id that clients
        use ambiguous)."""
        self._providers: dict[str, ProviderSettings] = {}
        for provider in providers:
            for name in (provider.name, *provider.aliases):
                self._providers[name.lower()] = provider
        self._listed = [Target(p.name, m.id, m) for p in providers for m in p.models]
        self._by_bare_id: dict[str, list[Target]] = {}
        for target in self._listed:
            if target.provider not in qualified_only:
                self._by_bare_id.setdefault(target.upstream_model, []).append(target)
        self.aliases = dict(aliases)
        self._check()

    def _check(self) -> None:
        for alias, name in self.aliases.items():
            try:
                self.resolve(name)
            except ModelNotFoundError as exc:
                raise ConfigError(exc.message, key=f"aliases.{alias}") from None
        for target in self._listed:
            for fallback in target.model.fallbacks:
                try:
                    self.resolve(fallback)
                except ModelNotFoundError as exc:
                    raise ConfigError(
                        exc.message,
                        key=f"providers({target.provider}).models({target.upstream_model}).fallbacks",
                    ) from None

    def resolve(self, name: str) -> Target:
        """The target of a name; ``ModelNotFoundError`` naming close matches otherwise."""
        if len(name) > MAX_MODEL_NAME:
            raise InvalidRequestError(
                f"'model' is longer than {MAX_MODEL_NAME} characters", param="model"
            )
        if not self._providers:
            raise ModelNotFoundError(name, hint="This router has no providers configured.")
        name = self.aliases.get(name, name)
        provider_name, sep, model_id = name.partition("#")
        if not sep:
            found = self._by_bare_id.get(name, [])
            if len(found) == 1:
                return found[0]
            raise ModelNotFoundError(name, [t.public_id for t in found] or self._close_to(name))
        provider = self._providers.get(provider_name.lower())
        if provider is None or not model_id:
            raise ModelNotFoundError(name, self._close_to(name))
        listed = {m.id: m for m in provider.models}
        model = listed.get(model_id) or next(
            (m for m in provider.models if m.id.lower() == model_id.lower()), None
        )
        if model is not None:
            return Target(provider.name, model.id, model)
        if provider.allow_unlisted_models:
            if len(model_id) > MAX_MODEL_ID:
                raise InvalidRequestError(
                    f"the model id after '#' is longer than {MAX_MODEL_ID} characters",
                    param="model",
                )
            return Target(provider.name, model_id, _unlisted(provider, model_id))
        raise ModelNotFoundError(name, self._close_to(name))

    def fallbacks(self, target: Target) -> list[Target]:
        return [self.resolve(name) for name in target.model.fallbacks]

    def _close_to(self, name: str) -> list[str]:
        names = [t.public_id for t in self._listed] + list(self.aliases)
        folded = {n.lower(): n for n in names}
        close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.5)
        return [folded[c] for c in close]

    # ------------------------------------------------------------------ cards

    def cards(self) -> list[ModelCard]:
        """Every listed model, then every alias, as ``/v1/models`` shows them."""
        cards = [_card(t.public_id, t) for t in self._listed]
        cards += [_card(alias, self.resolve(alias)) for alias in self.aliases]
        return cards

    def card(self, model_id: str) -> ModelCard:
        target = self.resolve(model_id)
        shown = model_id if model_id in self.aliases else target.public_id
        return _card(shown, target)


def table_priced(kind: str, model_id: str, base_url: str | None) -> ModelSettings:
    """A model at the price table's prices (``PriceUnknownError`` when it has none)."""
    price = table_price(kind, model_id, base_url)
    return ModelSettings(
        id=model_id, prompt_price=price.prompt_price, completion_price=price.completion_price
    )


def _unlisted(provider: ProviderSettings, model_id: str) -> ModelSettings:
    if provider.unlisted_pricing == "table":
        return table_priced(provider.kind, model_id, provider.base_url)
    return ModelSettings(
        id=model_id,
        prompt_price=provider.unlisted_prompt_price,
        completion_price=provider.unlisted_completion_price,
    )


def _card(shown_id: str, target: Target) -> ModelCard:
    model = target.model
    return ModelCard(
        id=shown_id,
        name=model.name or model.id,
        created=model.created,
        owned_by=target.provider,
        description=model.description,
        pricing=Pricing(
            prompt=price_string(model.prompt_price), completion=price_string(model.completion_price)
        ),
        context_length=model.context_length,
        max_output_length=model.max_output_length,
        input_modalities=model.input_modalities,
        output_modalities=model.output_modalities,
        supported_sampling_parameters=model.supported_sampling_parameters,
        supported_features=model.supported_features,
        video=_video_terms(model) if model.is_video else None,
    )


def _video_terms(model: ModelSettings) -> VideoTerms:
    return VideoTerms(
        resolutions=model.resolutions,
        ratios=model.ratios,
        min_duration=model.min_duration,
        max_duration=model.max_duration,
        fps=model.fps,
        price_per_second={r: price_string(p) for r, p in model.price_per_second.items()} or None,
    )
