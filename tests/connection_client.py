"""Seed 003's provider connection routes as a client calls them: plain ``requests`` with a
Bearer key, and its envelope read strictly (``{"success", "data"}`` or ``{"success",
"error": {"code", "message", "field"}}``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.conftest import gateway_config

#: the router's secret_key in these tests (provider keys are encrypted under it)
SECRET_KEY = "connections-test-secret-key-0123456789"


def connection_config(openai_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The gateway config on a SQLite file of this test (its bytes can be read), with a
    secret_key and the config provider ``OpenAI`` also known as ``oai``."""
    config = gateway_config(
        openai_url,
        secret_key=SECRET_KEY,
        database_url=f"sqlite:///{tmp_path}/store.db",
        **overrides,
    )
    config["providers"][1]["aliases"] = ["oai"]
    return config


def call(
    base: str,
    method: str,
    path: str,
    secret: str | None,
    body: Any = None,
    *,
    data: bytes | None = None,
) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
        return requests.request(method, base + path, data=data, headers=headers, timeout=10)
    return requests.request(method, base + path, json=body, headers=headers, timeout=10)


def data_of(answer: requests.Response, status: int = 200) -> Any:
    """The ``data`` of a success envelope with ``status``."""
    assert answer.status_code == status, answer.text
    payload = answer.json()
    assert set(payload) == {"success", "data"} and payload["success"] is True, payload
    return payload["data"]


def error_of(answer: requests.Response, status: int) -> dict[str, Any]:
    """The ``error`` of a failure envelope with ``status``."""
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    payload = answer.json()
    assert set(payload) == {"success", "error"} and payload["success"] is False, payload
    error = payload["error"]
    assert set(error) == {"code", "message", "field"}, error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


def create(base: str, admin: str, body: dict[str, Any]) -> dict[str, Any]:
    """A new connection's view (201)."""
    return dict(data_of(call(base, "POST", "/v1/llm-providers", admin, body), 201))
