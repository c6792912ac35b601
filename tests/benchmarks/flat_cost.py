"""Flat cost: the quota check and the billing write do not scan history. Two Routers on
the echo provider, each on its own SQLite file: one with an empty ledger, one holding a
million ledger rows of the key it is called with, interleaved with the echo adapter alone.

The rows are copies of a real settled call of that key (read back from the ledger table
by reflection, so they follow whatever the schema is), spread over two years of days and
inserted in batches.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import contenders
from .lanes import compete
from .report import Section, Table
from .resources import Resources
from .routers import SQLITE_FILE, open_router
from .timing import added, spread

ECHO = "echo adapter alone"
EMPTY = "empty ledger"
FULL = "full ledger"
FLAT_TARGET = 1.20
_BATCH_ROWS = 50_000
_HISTORY_DAYS = 730
_DAY_MS = 86_400_000


@contextmanager
def full_ledger_chat(rows: int) -> Iterator[Any]:
    """``router.chat()`` on the echo provider, its key's ledger filled with ``rows`` rows."""
    with open_router(None, SQLITE_FILE, "flat") as (router, secret):
        chat = contenders.router_call(router, secret, False, None)
        chat()  # the settled call every bulk row is copied from
        _bulk_insert(router, rows)
        yield chat


def _bulk_insert(router: Any, rows: int) -> None:
    from sqlalchemy import MetaData, Table, insert, select

    engine = router.store.engine
    ledger = Table(router.settings.table_prefix + "ledger", MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        model = dict(conn.execute(select(ledger).limit(1)).mappings().one())
    for column in ledger.primary_key.columns:
        if column.autoincrement in (True, "auto") and column.name in model:
            del model[column.name]
    today = int(time.time() * 1000) // _DAY_MS
    for first in range(0, rows, _BATCH_ROWS):
        batch = []
        for i in range(first, min(first + _BATCH_ROWS, rows)):
            at = (today - 1 - i % _HISTORY_DAYS) * _DAY_MS + i % _DAY_MS
            row = {**model, "request_id": f"bulk-{i:09d}"}
            for name, value in (
                ("day", at // _DAY_MS),
                ("started_at", at),
                ("finished_at", at + 250),
            ):
                if name in row:
                    row[name] = value
            batch.append(row)
        with engine.begin() as conn:
            conn.execute(insert(ledger), batch)


def run(table: Table, resources: Resources, rows: int, rounds: int, warmup: int) -> None:
    specs: list[Any] = [
        (ECHO, contenders.echo_alone, ()),
        (EMPTY, contenders.router_chat, (None, SQLITE_FILE, "flat")),
        (FULL, full_ledger_chat, (rows,)),
    ]
    results = compete(resources.log_dir, specs, rounds, warmup)
    echo = results[ECHO]
    section = Section(
        "flat cost with history, SQLite file, echo provider (ms)",
        ["rows before", "router.chat()", "p99", "added over echo"],
    )
    costs = {}
    for name, size in ((EMPTY, 0), (FULL, rows + 1)):
        contender = results[name]
        if not (contender.ran and echo.ran):
            section.add(name, contender.problem or echo.problem or "not run")
            continue
        costs[name] = added(contender.values, echo.values)
        figures = spread(contender.values)
        section.add(
            name,
            contender.problem,
            **{
                "rows before": size,
                "router.chat()": figures["median"],
                "p99": figures["p99"],
                "added over echo": costs[name],
            },
        )
    if len(costs) == 2 and costs[EMPTY]:
        growth = costs[FULL] / costs[EMPTY]
        verdict = "met" if growth <= FLAT_TARGET else "MISSED"
        section.notes.append(
            f"full / empty added cost: {growth:.2f}x (target <= {FLAT_TARGET:.2f}x: "
            f"{verdict}); {rounds} rounds, interleaved"
        )
    table.sections.append(section)
