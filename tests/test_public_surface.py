"""The public surface: what ``import llmrouter`` offers, and what a type checker sees."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import llmrouter
from llmrouter import errors
from llmrouter.router import Router

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_is_exported() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and value.__module__ == errors.__name__
        and (issubclass(value, Exception) or name == "FailureScope")
    }
    assert tree >= {"UpstreamRejectedError", "UpstreamUnsupportedError", "FailureScope"}
    assert tree <= set(llmrouter.__all__)
    for name in tree:
        assert getattr(llmrouter, name) is getattr(errors, name)


def _named_types(annotation: object) -> set[type]:
    """The classes an annotation mentions (``list[KeyRecord] | None`` -> KeyRecord)."""
    if inspect.isclass(annotation) and not typing.get_args(annotation):
        return {annotation}
    found: set[type] = set()
    origin = typing.get_origin(annotation)
    if inspect.isclass(origin):
        found.add(origin)
    for argument in typing.get_args(annotation):
        found |= _named_types(argument)
    return found


def test_every_type_a_router_method_takes_or_returns_is_exported() -> None:
    ours: set[type] = set()
    for name, method in inspect.getmembers(Router, inspect.isfunction):
        if name.startswith("_") and name != "__init__":
            continue
        hints = typing.get_type_hints(method, vars(sys.modules[Router.__module__]))
        for annotation in hints.values():
            ours |= {t for t in _named_types(annotation) if t.__module__.startswith("llmrouter")}
    # Router's constructor takes a Store: built for it by from_config, not a public type.
    ours = {t for t in ours if t.__name__ != "Store"}
    assert {t.__name__ for t in ours} >= {"MeteredStream", "KeyRecord", "UsageRow", "ChatResult"}
    missing = sorted(t.__name__ for t in ours if getattr(llmrouter, t.__name__, None) is not t)
    assert missing == []
    assert set(llmrouter.__all__) <= set(dir(llmrouter))


def test_importing_llmrouter_loads_no_web_framework() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, llmrouter; print(sorted({m.split('.')[0] for m in sys.modules}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for framework in ("flask", "werkzeug", "click", "alembic"):
        assert f"'{framework}'" not in loaded


def test_a_type_checker_knows_what_stream_selects(tmp_path: Path) -> None:
    snippet = tmp_path / "uses_chat.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from typing import assert_type

            from llmrouter import ChatCompletion, MeteredStream, Router

            router = Router.from_config({"database_url": "sqlite://"})
            ask = {"model": "echo#echo", "messages": [], "api_key": "sk-llmr-x"}
            assert_type(router.chat(model="m", messages=[], api_key="k"), ChatCompletion)
            assert_type(
                router.chat(model="m", messages=[], api_key="k", stream=False), ChatCompletion
            )
            assert_type(
                router.chat(model="m", messages=[], api_key="k", stream=True), MeteredStream
            )
            def decided_at_run_time(flag: bool) -> None:
                assert_type(
                    router.chat(model="m", messages=[], api_key="k", stream=flag),
                    ChatCompletion | MeteredStream,
                )
            """
        )
    )
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--cache-dir",
            str(tmp_path / "mypy_cache"),
            "--no-incremental",
            str(snippet),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
