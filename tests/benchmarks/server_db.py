"""What a call costs on each database beyond its two durable commits (the admission's and
the settlement's): ``router.chat()`` on the offline echo provider, beside the echo adapter
alone and a bare pair of committed single-row UPDATEs on the driver, all interleaved.
"""

from __future__ import annotations

from typing import Any

from . import contenders
from .lanes import compete
from .report import Section, Table
from .resources import Resources
from .routers import databases
from .timing import added, spread

ECHO = "echo adapter alone"


def run(table: Table, resources: Resources, rounds: int, warmup: int) -> None:
    found = databases()
    specs: list[Any] = [(ECHO, contenders.echo_alone, ())]
    for database in found:
        if database.unset:
            continue
        specs += [
            (f"{database.name} commits", contenders.commit_pair, (database, "floor")),
            (f"{database.name} chat", contenders.router_chat, (None, database, "echo")),
        ]
    results = compete(resources.log_dir, specs, rounds, warmup)
    echo = results[ECHO]
    section = Section(
        "per call on each database, echo provider (ms)",
        ["two commits", "router.chat()", "chat p95", "beyond commits"],
    )
    for database in found:
        if database.unset:
            section.add(database.name, f"not run: {database.unset} is not set")
            continue
        floor, chat = results[f"{database.name} commits"], results[f"{database.name} chat"]
        if not (floor.ran and chat.ran and echo.ran):
            problem = floor.problem or chat.problem or echo.problem
            section.add(database.name, problem or "not run")
            continue
        section.add(
            database.name,
            "; ".join(p for p in (floor.problem, chat.problem) if p),
            **{
                "two commits": spread(floor.values)["median"],
                "router.chat()": spread(chat.values)["median"],
                "chat p95": spread(chat.values)["p95"],
                "beyond commits": added(chat.values, echo.values, floor.values),
            },
        )
    if echo.ran:
        section.notes.append(
            f"echo adapter alone: median {spread(echo.values)['median']:.3f} ms. "
            f"{rounds} rounds, interleaved; two commits = two transactions of one "
            "single-row UPDATE each on the driver connection of a Router's own engine; "
            "beyond commits = median of (router.chat() - echo alone - two commits)"
        )
    else:
        section.notes.append(f"echo adapter alone: {echo.problem}")
    table.sections.append(section)
