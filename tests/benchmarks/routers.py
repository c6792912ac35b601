"""The Routers the benchmarks measure: one config (the loopback upstream as an ``openai``
provider, and the offline ``echo`` provider) on each database that is available here.

PostgreSQL and MariaDB/MySQL are used when ``LLMROUTER_TEST_POSTGRES_URL`` /
``LLMROUTER_TEST_MYSQL_URL`` are set, each use under a table prefix of its own, dropped at
its end, so a test database's other tables (and a concurrent run's) are never touched.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .report import Unavailable
from .upstream import MODEL

UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
#: our name of the upstream's model, and of the echo provider's
ROUTED_MODEL = f"bench#{MODEL}"
ECHO_MODEL = "echo#echo"
#: every benchmark table prefix starts with this, so leftovers are easy to recognise
PREFIX = "llmbench_"


@dataclass(frozen=True)
class Database:
    """A database to run a Router on: ``url`` ``None`` means a fresh SQLite file."""

    name: str
    url: str | None = None
    unset: str | None = None  # the variable that would enable it, when it is not set

    @property
    def server(self) -> bool:
        return self.url is not None


SQLITE_FILE = Database("SQLite file")


def databases() -> list[Database]:
    """SQLite always; the server databases whose URLs are set (or, unset, the reason)."""
    found = [SQLITE_FILE]
    for name, variable in (
        ("PostgreSQL", "LLMROUTER_TEST_POSTGRES_URL"),
        ("MariaDB", "LLMROUTER_TEST_MYSQL_URL"),
    ):
        url = os.environ.get(variable)
        found.append(Database(name, url=url) if url else Database(name, unset=variable))
    return found


def config(upstream_url: str | None, database_url: str, prefix: str = "llmrouter_") -> dict:
    """Both providers with decimal prices, and an allowance no benchmark exhausts."""
    providers: list[dict[str, Any]] = [
        {
            "name": "echo",
            "kind": "echo",
            "models": [{"id": "echo", "prompt_price": "0.000001", "completion_price": "0.000002"}],
        }
    ]
    if upstream_url is not None:
        providers.append(
            {
                "name": "bench",
                "kind": "openai",
                "base_url": upstream_url + "/v1",
                "api_key": UPSTREAM_KEY,
                "max_retries": 0,
                "models": [
                    {
                        "id": MODEL,
                        "prompt_price": "0.00000015",
                        "completion_price": "0.0000006",
                        "max_output_length": 1_000_000,
                    }
                ],
            }
        )
    return {
        "database_url": database_url,
        "table_prefix": prefix,
        "quota": {"daily_requests": 1_000_000_000},
        "providers": providers,
    }


@contextmanager
def database_url(database: Database, role: str) -> Iterator[tuple[str, str]]:
    """A URL and a table prefix for one use (``role``, e.g. ``latency``) of ``database``:
    a fresh SQLite file in a temporary directory, or the server's URL under a new prefix
    (``llmbench_<role>_<random>_``) whose tables are dropped at the end."""
    if database.unset:
        raise Unavailable(f"{database.unset} is not set")
    if database.url is None:
        with tempfile.TemporaryDirectory(prefix="llmrouter-bench-") as directory:
            yield "sqlite:///" + os.path.join(directory, "bench.db"), "llmrouter_"
        return
    # a prefix of this use alone: two runs at once (two developers sharing a test
    # database) must not drop each other's tables
    prefix = f"{PREFIX}{role[:7]}_{secrets.token_hex(3)}_"
    try:
        _create_tables(database.url, prefix)
        yield database.url, prefix
    finally:
        drop_tables(database.url, prefix)


def _create_tables(url: str, prefix: str) -> None:
    """As ``llmrouter db upgrade`` does: a server database's schema is made by its operator."""
    from llmrouter.store import Store

    store = Store(url, table_prefix=prefix, check_schema=False)
    try:
        store.upgrade_database()
    finally:
        store.close()


def drop_tables(url: str, prefix: str) -> None:
    """Every table whose name starts with ``prefix`` (the store's and the benchmark's)."""
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine, only=lambda name, _: name.startswith(prefix))
        tables.drop_all(engine)
    finally:
        engine.dispose()


@contextmanager
def open_router(
    upstream_url: str | None, database: Database, role: str
) -> Iterator[tuple[Any, str]]:
    """A Router on ``database`` and the secret of a key it knows; closed (and its tables
    dropped) at the end."""
    from llmrouter import Router

    with database_url(database, role) as (url, prefix):
        router = Router.from_config(config(upstream_url, url, prefix))
        try:
            _, secret = router.create_key(f"bench-{role}")
            yield router, secret
        finally:
            router.close()
