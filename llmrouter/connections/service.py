"""``router.connections``: provider connections managed at run time (seed 003) — listed
beside the config file's providers, created, changed, deleted, tested.

A change is written to the store (bumping its change counter) and this process's
directory is rebuilt at once; every other process sharing the database rebuilds within
about a second (``providers.live_directory``). Config-file providers are listed
read-only (``source: "config"``): changing or deleting one is a 409.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..billing import Prices
from ..config import ProviderSettings
from ..errors import ConfigError, ConflictError, InvalidRequestError, NotFoundError, UpstreamError
from ..naming import ModelCatalog
from ..providers.registry import build_adapter
from ..schemas import describe_validation_error, parse_chat_request
from ..secrets import SecretBox, mask
from ..store import ConnectionRecord
from .chat import ChatSessions
from .fields import (
    CONFIG_ID_PREFIX,
    ConnectionChanges,
    NewConnection,
    check_complete,
    check_routable,
    config_record,
    parse,
    settings_of,
)

if TYPE_CHECKING:
    from ..router import Router

#: what a connection test sends: the shortest exchange every provider accepts
TEST_PROMPT = "Reply with the word OK."
TEST_MAX_TOKENS = 16
#: the longest upstream reason a failed test stores and shows
MAX_REASON = 500


@dataclass(frozen=True)
class TestResult:
    """``POST /llm-providers/{id}/test``: ``ok`` with the model and the time it took
    (milliseconds), or ``error`` with the upstream's reason (never its key)."""

    status: str
    model: str | None
    response_time_ms: int | None = None
    reason: str | None = None

    def view(self) -> dict[str, Any]:
        if self.status == "ok":
            return {"status": "ok", "model": self.model, "responseTime": self.response_time_ms}
        return {"status": "error", "model": self.model, "reason": self.reason}


class Connections:
    """The connection operations of one Router (``router.connections``)."""

    def __init__(self, router: Router, box: SecretBox | None) -> None:
        self._router = router
        self._box = box
        #: chat with a connection, and its chat sessions (``chat.py``)
        self.sessions = ChatSessions(router)

    # ---------------------------------------------------------------- reading

    def list(self) -> list[ConnectionRecord]:
        """The config file's providers (read-only), then the connections, oldest first."""
        totals = {t.provider: t.cost_nanos for t in self._router.store.provider_totals()}
        configured = [
            config_record(p, totals.get(p.name, 0)) for p in self._router.settings.providers
        ]
        return configured + self._router.store.list_connections()[1]

    def get(self, connection_id: str) -> ConnectionRecord:
        """One connection or config provider (``NotFoundError`` for an unknown id)."""
        configured = self._configured(connection_id)
        if configured is not None:
            totals = {t.provider: t.cost_nanos for t in self._router.store.provider_totals()}
            return config_record(configured, totals.get(configured.name, 0))
        return self._router.store.get_connection(_checked_id(connection_id))

    # ---------------------------------------------------------------- changing

    def create(self, fields: Mapping[str, Any]) -> ConnectionRecord:
        """A new connection from seed 003's fields (``name``, ``provider``, ``apiKey``,
        ``model``, ``baseUrl``, ``configuration``, ``models``); routable as
        ``name#model`` at once. 400 naming a bad field, 409 for a taken name."""
        new = parse(NewConnection, fields)
        assert new.name is not None and new.provider is not None  # required by NewConnection
        check_complete(new.provider, api_key=new.api_key, base_url=new.base_url)
        self._check_name_free(new.name)
        box = self._secret_box()
        now = self._router.now_ms()
        values: dict[str, Any] = {
            "id": "prov-" + uuid.uuid4().hex,  # 37 characters: the id columns are 40 wide
            "name": new.name,
            "provider": new.provider,
            "model": new.model,
            "base_url": new.base_url,
            "api_key_encrypted": box.encrypt(new.api_key) if new.api_key else None,
            "api_key_hint": mask(new.api_key) if new.api_key else None,
            "configuration": _configuration(new),
            "models": _models(new),
            "status": "disabled" if new.status == "disabled" else "active",
            "status_reason": None,
            "created_at": now,
            "updated_at": now,
        }
        self._check_buildable(values, new.api_key)
        record = self._router.store.create_connection(values)
        self._router.refresh_directory()
        return record

    def update(self, connection_id: str, fields: Mapping[str, Any]) -> ConnectionRecord:
        """Change the fields given (seed 003's names; ``status``: ``active`` or
        ``disabled``). A config provider is a 409."""
        self._refuse_config(connection_id)
        current = self._router.store.get_connection(_checked_id(connection_id))
        changes = parse(ConnectionChanges, fields)
        given = changes.model_fields_set
        if "name" in given and changes.name is None:
            raise InvalidRequestError("Invalid 'name': a connection needs a name.", param="name")
        if "provider" in given and changes.provider is None:
            raise InvalidRequestError("Invalid 'provider': it cannot be null.", param="provider")
        values: dict[str, Any] = {}
        if changes.name is not None and changes.name != current.name:
            if changes.name.lower() != current.name.lower():
                self._check_name_free(changes.name)
            values["name"] = changes.name
        if changes.provider is not None:
            values["provider"] = changes.provider
        for field in ("model", "base_url"):
            if field in given:
                values[field] = getattr(changes, field)
        if "configuration" in given:
            values["configuration"] = _configuration(changes)
        if "models" in given:
            values["models"] = _models(changes)
        if changes.status is not None:
            values["status"] = changes.status
            values["status_reason"] = None
        api_key: str | None = None
        if "api_key" in given:
            api_key = changes.api_key
            box = self._secret_box()
            values["api_key_encrypted"] = box.encrypt(api_key) if api_key else None
            values["api_key_hint"] = mask(api_key) if api_key else None
        else:
            api_key = self._stored_key(current)
        merged = {**_values_of(current), **values}
        check_complete(merged["provider"], api_key=api_key, base_url=merged["base_url"])
        self._check_buildable(merged, api_key)
        values["updated_at"] = self._router.now_ms()
        record = self._router.store.update_connection(current.id, values)
        self._router.refresh_directory()
        return record

    def delete(self, connection_id: str) -> ConnectionRecord:
        """Delete a connection and its chat sessions; it stops routing at once here and
        within about a second elsewhere. Its ledger rows and totals stay."""
        self._refuse_config(connection_id)
        record = self._router.store.delete_connection(_checked_id(connection_id))
        self._router.refresh_directory()
        return record

    # ---------------------------------------------------------------- testing

    def test(self, connection_id: str) -> TestResult:
        """One minimal real request through the connection's adapter (disabled or not),
        billed to no key and counted in its provider totals. A failure sets the
        connection's status to ``error`` with the reason; a success clears it."""
        record = self.get(connection_id)
        settings = self._settings_of_any(record)
        model = record.model or (settings.models[0].id if settings.models else None)
        if model is None:
            raise InvalidRequestError(
                "The connection has no model to test with: set its 'model'.", param="model"
            )
        target = ModelCatalog([settings], {}).resolve(f"{settings.name}#{model}")
        request = parse_chat_request(
            {
                "model": target.public_id,
                "messages": [{"role": "user", "content": TEST_PROMPT}],
                "max_tokens": TEST_MAX_TOKENS,
            }
        )
        adapter = self._router.directory.adapters.get(settings.name)
        own = adapter is None or record.source == "store"
        if own:
            adapter = build_adapter(settings)
        assert adapter is not None
        started = time.perf_counter()
        try:
            completion = adapter.chat(request, target.upstream_model)
        except UpstreamError as exc:
            reason = exc.message[:MAX_REASON]
            self._set_status(record, "error", reason)
            return TestResult("error", target.upstream_model, reason=reason)
        finally:
            if own:
                adapter.close()
        elapsed = round((time.perf_counter() - started) * 1000)
        usage = completion.usage
        prompt = usage.prompt_tokens if usage else 0
        answer = usage.completion_tokens if usage else 0
        self._router.store.record_provider_call(
            settings.name,
            prompt_tokens=prompt,
            completion_tokens=answer,
            cost_nanos=Prices.of(target.model).cost_nanos(prompt, answer),
        )
        if record.status == "error":
            self._set_status(record, "active", None)
        return TestResult("ok", target.upstream_model, response_time_ms=elapsed)

    # ---------------------------------------------------------------- the directory

    def settings_of(self, record: ConnectionRecord) -> ProviderSettings:
        """The router's settings of a stored connection (its key decrypted)."""
        return settings_of(
            name=record.name,
            provider=record.provider,
            api_key=self._stored_key(record),
            base_url=record.base_url,
            model=record.model,
            configuration=record.configuration,
            models=record.models,
        )

    # ---------------------------------------------------------------- helpers

    def _settings_of_any(self, record: ConnectionRecord) -> ProviderSettings:
        if record.source == "config":
            return next(p for p in self._router.settings.providers if p.name == record.name)
        return self.settings_of(record)

    def _stored_key(self, record: ConnectionRecord) -> str | None:
        if record.api_key_encrypted is None:
            return None
        return self._secret_box().decrypt(record.api_key_encrypted)

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            raise ConflictError(
                "This router has no secret_key, so it cannot store provider API keys "
                "encrypted: set secret_key or secret_key_env in its config.",
                param="apiKey",
                code="secret_key_missing",
            )
        return self._box

    def _set_status(self, record: ConnectionRecord, status: str, reason: str | None) -> None:
        if record.source != "store" or record.status == "disabled":
            return  # a config provider has no stored status; a disabled one stays so
        self._router.store.update_connection(
            record.id,
            {"status": status, "status_reason": reason, "updated_at": self._router.now_ms()},
        )
        self._router.refresh_directory()

    def _configured(self, connection_id: str) -> ProviderSettings | None:
        if not connection_id.startswith(CONFIG_ID_PREFIX):
            return None
        name = connection_id.removeprefix(CONFIG_ID_PREFIX)
        return next((p for p in self._router.settings.providers if p.name == name), None)

    def _refuse_config(self, connection_id: str) -> None:
        configured = self._configured(connection_id)
        if configured is not None:
            raise ConflictError(
                f"The provider '{configured.name}' comes from the config file: change it "
                "there (it is read-only over HTTP).",
                param="id",
                code="read_only_provider",
            )

    def _check_name_free(self, name: str) -> None:
        for provider in self._router.settings.providers:
            if name.lower() in (n.lower() for n in (provider.name, *provider.aliases)):
                raise ConflictError(
                    f"The name '{name}' is taken by the config file's provider "
                    f"'{provider.name}' (names are compared case-insensitively).",
                    param="name",
                    code="duplicate_name",
                )

    def _check_buildable(self, values: Mapping[str, Any], api_key: str | None) -> None:
        """The connection's settings, adapter and default model's price, or a 400 naming
        the field: a connection that cannot route is never stored."""
        check_routable(values["name"], values["model"], values["models"])
        try:
            settings = settings_of(
                name=values["name"],
                provider=values["provider"],
                api_key=api_key,
                base_url=values["base_url"],
                model=values["model"],
                configuration=values["configuration"],
                models=values["models"],
            )
            build_adapter(settings).close()
        except ValidationError as exc:
            message, field = describe_validation_error(exc)
            raise InvalidRequestError(message, param=field) from None
        except ConfigError as exc:
            raise InvalidRequestError(exc.reason, param="provider") from None


def _checked_id(connection_id: str) -> str:
    if not (0 < len(connection_id) <= 40) or not connection_id.isprintable():
        raise NotFoundError(f"no provider connection with id '{connection_id[:40]}'", param="id")
    return connection_id


def _configuration(fields: ConnectionChanges) -> dict[str, Any]:
    return fields.configuration.fields() if fields.configuration else {}


def _models(fields: ConnectionChanges) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") for m in fields.models or []]


def _values_of(record: ConnectionRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "provider": record.provider,
        "model": record.model,
        "base_url": record.base_url,
        "configuration": record.configuration,
        "models": record.models,
    }
