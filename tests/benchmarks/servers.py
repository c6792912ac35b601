"""The HTTP servers the benchmarks call, each in its own process on 127.0.0.1: gunicorn
serving one of ``wsgi_apps`` (the bare pass-through, our API) and the LiteLLM proxy.

Both gunicorn servers run the same settings, one gthread worker with 8 threads as in
``examples/gunicorn.conf.py`` but without its access log; the LiteLLM proxy runs as its
CLI starts it (uvicorn, one worker), from a config file and no database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import requests

from .contenders import LITELLM_OFFLINE
from .report import REPOSITORY, Unavailable
from .routers import UPSTREAM_KEY
from .upstream import MODEL
from .wsgi_apps import CONFIG_VARIABLE, UPSTREAM_URL_VARIABLE

GUNICORN_SETTINGS = ["--worker-class", "gthread", "--workers", "1", "--threads", "8"]
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789abcdef"
#: the proxy's name of the offline model (LiteLLM's ``mock_response``, its echo provider)
LITELLM_ECHO_MODEL = "echo"
_READY_SECONDS = 120.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def _serve(
    name: str, command: list[str], env: dict[str, str | None], ready_path: str, log: Path
) -> Iterator[str]:
    """Run ``command`` (``{port}`` filled in; ``env`` on top of ours, ``None`` unsetting)
    until it answers ``ready_path`` over HTTP; yield its base URL; stop its whole process
    group at the end."""
    port = _free_port()
    environment = {**os.environ, **env}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            env={k: v for k, v in environment.items() if v is not None},
            cwd=REPOSITORY,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _READY_SECONDS
        while True:
            if process.poll() is not None:
                raise Unavailable(f"{name} exited ({process.returncode}): {_last_line(log)}")
            try:
                requests.get(url + ready_path, timeout=2)
                break
            except requests.RequestException as exc:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"{name} did not answer within {_READY_SECONDS:.0f} s"
                    ) from exc
                time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def gunicorn(app: str, env: dict[str, str | None], log: Path) -> AbstractContextManager[str]:
    """``app`` (a ``wsgi_apps`` name) under gunicorn; its environment carries the app's
    settings."""
    try:
        import gunicorn as _  # noqa: F401
    except ImportError:
        raise Unavailable("gunicorn is not installed (pip install -e '.[bench]')") from None
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        *GUNICORN_SETTINGS,
        "--bind",
        "127.0.0.1:{port}",
        "--keep-alive",
        "75",
        "--log-level",
        "warning",
        f"tests.benchmarks.wsgi_apps:{app}",
    ]
    return _serve(f"gunicorn {app}", command, env, "/health", log)


def passthrough_server(upstream_url: str, log: Path) -> AbstractContextManager[str]:
    return gunicorn("passthrough", {UPSTREAM_URL_VARIABLE: upstream_url}, log)


def llmrouter_server(config: dict, log: Path) -> AbstractContextManager[str]:
    return gunicorn("llmrouter_api()", {CONFIG_VARIABLE: json.dumps(config)}, log)


def litellm_proxy(upstream_url: str, directory: Path, log: Path) -> AbstractContextManager[str]:
    """The proxy with two models: the upstream's, and the offline ``mock_response`` one;
    a master key (the proxy refuses to start without one) and no database."""
    executable = Path(sys.executable).with_name("litellm")
    try:
        import yaml
    except ImportError:
        raise Unavailable("the LiteLLM proxy is not installed (pip install '.[bench]')") from None
    if not executable.exists():
        raise Unavailable("the litellm command is not installed (pip install -e '.[bench]')")
    settings = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": "openai/" + MODEL,
                    "api_base": upstream_url + "/v1",
                    "api_key": UPSTREAM_KEY,
                },
            },
            {
                "model_name": LITELLM_ECHO_MODEL,
                "litellm_params": {"model": "openai/echo", "mock_response": "Hello there!"},
            },
        ],
        "general_settings": {"master_key": LITELLM_MASTER_KEY},
    }
    path = directory / "litellm.yaml"
    path.write_text(yaml.safe_dump(settings))
    command = [
        str(executable),
        "--config",
        str(path),
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--num_workers",
        "1",
    ]
    env: dict[str, str | None] = {**LITELLM_OFFLINE, "DATABASE_URL": None}
    return _serve("the LiteLLM proxy", command, env, "/health/liveliness", log)
