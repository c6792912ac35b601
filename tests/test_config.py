"""Config files and dicts: what is accepted, and the one clear error for what is not."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from llmrouter import ConfigError, Router
from llmrouter.config import load_settings
from llmrouter.errors import ModelNotFoundError

GOOD = """
database_url = "sqlite://"
secret_key_env = "LLMROUTER_TEST_SECRET"

[quota]
daily_requests = 50
throttle_seconds = 300

[aliases]
altllm-basic = "OpenAI#gpt-4o-mini"

[[providers]]
name = "OpenAI"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "LLMROUTER_TEST_OPENAI_KEY"
connect_timeout = 2
read_timeout = 30

[[providers.models]]
id = "gpt-4o-mini"
prompt_price = "0.00000015"
completion_price = "0.0000006"
context_length = 128000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "llmrouter.toml"
    path.write_text(text)
    return path


def test_a_full_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMROUTER_TEST_SECRET", "s3cret")
    monkeypatch.setenv("LLMROUTER_TEST_OPENAI_KEY", "sk-from-env")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.quota.daily_requests == 50
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "s3cret"
    provider = settings.providers[0]
    assert provider.secret() == "sk-from-env"
    assert provider.models[0].prompt_price == Decimal("0.00000015")
    assert "sk-from-env" not in repr(settings)


def test_embedded_default_is_echo_on_a_sqlite_file() -> None:
    settings = load_settings(None)
    assert settings.database_url == "sqlite:///llmrouter.db"
    assert [p.kind for p in settings.providers] == ["echo"]


@pytest.mark.parametrize(
    ("mutation", "key", "words"),
    [
        (
            ('prompt_price = "0.00000015"', "prompt_price = 0.00000015"),
            "providers[0](OpenAI).models[0].prompt_price",
            "decimal strings",
        ),
        (('kind = "openai"', 'kind = "openia"'), "kind", "known kinds"),
        (
            ("daily_requests = 50", "daily_requests = -1"),
            "quota.daily_requests",
            "greater than or equal",
        ),
        (("daily_requests = 50", "daily_requests = 50\nburst = 3"), "quota.burst", "Extra inputs"),
        (('"OpenAI#gpt-4o-mini"', '"OpenAI#gpt-5"'), "aliases.altllm-basic", "does not exist"),
        (
            ('api_key_env = "LLMROUTER_TEST_OPENAI_KEY"', 'api_key_env = "LLMROUTER_TEST_UNSET"'),
            "providers[0](OpenAI).api_key_env",
            "not set",
        ),
    ],
)
def test_a_bad_file_names_the_file_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutation: tuple[str, str], key: str, words: str
) -> None:
    monkeypatch.setenv("LLMROUTER_TEST_SECRET", "s3cret")
    monkeypatch.setenv("LLMROUTER_TEST_OPENAI_KEY", "sk-from-env")
    path = write(tmp_path, GOOD.replace(*mutation))
    with pytest.raises(ConfigError) as caught:
        Router.from_config(path)
    assert str(path) in caught.value.message
    assert key in caught.value.message
    assert words in caught.value.message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "database_url = "))
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_duplicate_provider_names_and_models_are_refused() -> None:
    echo = {"name": "echo", "kind": "echo", "models": [{"id": "a"}]}
    with pytest.raises(ConfigError, match="already used"):
        load_settings({"providers": [echo, {**echo, "name": "ECHO"}]})
    with pytest.raises(ConfigError, match="listed twice"):
        load_settings({"providers": [{**echo, "models": [{"id": "a"}, {"id": "a"}]}]})


def test_unknown_fallback_is_refused() -> None:
    config = {
        "database_url": "sqlite://",
        "providers": [
            {"name": "echo", "kind": "echo", "models": [{"id": "a", "fallbacks": ["echo#b"]}]}
        ],
    }
    with pytest.raises(ConfigError, match="fallbacks"):
        Router.from_config(config)


def test_missing_database_driver_says_which_extra(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"database_url"):
        Router.from_config({"database_url": "postgresql+nosuchdriver://x@127.0.0.1/db"})


def test_the_example_config_builds_a_router(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for provider in ("OPENAI", "ANTHROPIC", "GEMINI", "MISTRAL", "ARK", "OPENROUTER"):
        monkeypatch.setenv(f"{provider}_API_KEY", f"test-{provider.lower()}-api-key")
    example = Path(__file__).parent.parent / "examples" / "llmrouter.toml"
    monkeypatch.chdir(tmp_path)  # its SQLite file lands here
    router = Router.from_config(example)
    try:
        assert router.catalog.resolve("claude#claude-sonnet-4-5").provider == "Anthropic"
        assert router.catalog.resolve("altllm-basic").public_id == "OpenAI#gpt-4o-mini"
        assert {p.kind for p in router.settings.providers} == {
            "openai",
            "anthropic",
            "gemini",
            "mistral",
            "openai-compatible",
            "ark",
            "openrouter",
        }
    finally:
        router.close()


def test_a_router_without_providers_says_so_when_asked_for_a_model() -> None:
    router = Router.from_config({"database_url": "sqlite://"})
    _, secret = router.create_key("someone")
    with pytest.raises(ModelNotFoundError, match="has no providers configured"):
        router.chat(model="echo#echo", messages=[{"role": "user", "content": "hi"}], api_key=secret)
    router.close()
