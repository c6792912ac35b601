"""Shows the per-request quota check and billing write do not scan history: the same calls
on a database with an empty ledger and on one holding many ledger rows of the calling key.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select

from llmrouter import Router
from llmrouter.schemas import parse_chat_request
from llmrouter.store import KeyRecord, Settlement
from llmrouter.store.tables import ledger
from tests.benchmarks.bench_overhead import (
    Pairs,
    database_url,
    interleave,
    machine,
    percentile,
    quota,
)

MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
BATCH_ROWS = 50_000
HISTORY_DAYS = 730
DAY_MS = 86_400_000


@dataclass
class Ledger:
    """One Router on its own database, the key it is called with, and what was measured."""

    router: Router
    key: KeyRecord
    secret: str
    rows: int = 0
    admit: list[float] = field(default_factory=list)
    settle: list[float] = field(default_factory=list)


def config(database: str) -> dict[str, Any]:
    return {
        "database_url": database,
        "quota": quota(),
        "providers": [
            {
                "name": "echo",
                "kind": "echo",
                "models": [
                    {
                        "id": "echo",
                        "prompt_price": "0.000001",
                        "completion_price": "0.000002",
                        "max_output_length": 1000,
                    }
                ],
            }
        ],
    }


def ledger_rows(router: Router) -> int:
    with router.store.transaction() as conn:
        return conn.execute(select(func.count()).select_from(ledger)).scalar_one()


def bulk_insert(router: Router, key: KeyRecord, rows: int) -> float:
    """Insert ``rows`` settled calls of ``key`` spread over two years; the seconds it took."""
    today = int(time.time() * 1000) // DAY_MS
    start = time.perf_counter()
    for first in range(0, rows, BATCH_ROWS):
        batch = []
        for i in range(first, min(first + BATCH_ROWS, rows)):
            at = (today - 1 - i % HISTORY_DAYS) * DAY_MS + i % DAY_MS
            batch.append(
                {
                    "request_id": f"bulk-{i:09d}",
                    "key_id": key.id,
                    "provider": "echo",
                    "model": "echo#echo",
                    "upstream_model": "echo",
                    "admission": "allowance",
                    "status": "ok",
                    "prompt_tokens": 12,
                    "completion_tokens": 5,
                    "usage_estimated": False,
                    "cost_nanos": 22_000,
                    "charged_nanos": 0,
                    "day": at // DAY_MS,
                    "started_at": at,
                    "finished_at": at + 250,
                    "error": None,
                }
            )
        with router.store.transaction() as conn:
            conn.execute(insert(ledger), batch)
    return time.perf_counter() - start


def measure_chat(empty: Ledger, full: Ledger, count: int, warmup: int) -> tuple[Pairs, Pairs]:
    """Rounds of the echo adapter alone, ``router.chat`` on each ledger, in rotating order."""
    adapter = empty.router.directory.adapter("echo")
    request = parse_chat_request({"model": "echo#echo", "messages": MESSAGES, "max_tokens": 16})

    def routed(target: Ledger) -> None:
        target.router.chat(
            model="echo#echo", messages=MESSAGES, api_key=target.secret, max_tokens=16
        )

    echo, on_empty, on_full = interleave(
        [lambda: adapter.chat(request, "echo"), lambda: routed(empty), lambda: routed(full)],
        count,
        warmup,
    )
    return Pairs(echo, on_empty), Pairs(echo, on_full)


def measure_store(ledgers: list[Ledger], count: int, warmup: int) -> None:
    """``Store.admit`` then ``Store.settle`` alone, alternating between the ledgers."""
    for i in range(warmup + count):
        for j in range(len(ledgers)):
            target = ledgers[(i + j) % len(ledgers)]
            store = target.router.store
            now = int(time.time() * 1000)
            start = time.perf_counter_ns()
            admission = store.admit(
                target.key.id,
                request_id=f"flat-{i}-{j}-{now}",
                now=now,
                deadline_at=now + 60_000,
                defaults=target.router.quota.defaults,
                reserve_nanos=50_000,
                premium=False,
                provider="echo",
                model="echo#echo",
                upstream_model="echo",
            )
            admitted = time.perf_counter_ns()
            assert admission.ticket is not None
            settlement = Settlement(
                ticket=admission.ticket,
                provider="echo",
                model="echo#echo",
                upstream_model="echo",
                status="ok",
                prompt_tokens=12,
                completion_tokens=5,
                usage_estimated=False,
                cost_nanos=22_000,
                finished_at=now,
            )
            settling = time.perf_counter_ns()
            store.settle(settlement)
            settled = time.perf_counter_ns()
            if i >= warmup:
                target.admit.append((admitted - start) / 1e6)
                target.settle.append((settled - settling) / 1e6)


def paired_median(before: list[float], after: list[float]) -> float:
    return statistics.median(a - b for a, b in zip(after, before, strict=True))


def report(empty: Ledger, full: Ledger, chats: tuple[Pairs, Pairs]) -> str:
    lines = [
        "router.chat vs the echo adapter alone (ms)",
        f"{'ledger rows':<12}{'echo p50':>10}{'router p50':>12}{'router p99':>12}"
        f"{'added p50 (pairs)':>19}{'added (medians)':>17}{'ratio':>8}",
    ]
    for target, chat in zip((empty, full), chats, strict=True):
        lines.append(
            f"{target.rows:<12,}{statistics.median(chat.baseline):>10.3f}"
            f"{statistics.median(chat.measured):>12.3f}{percentile(chat.measured, 99):>12.3f}"
            f"{chat.added_paired:>19.3f}{chat.added_medians:>17.3f}{chat.ratio:>7.2f}x"
        )
    lines += ["", "store calls alone (ms)", f"{'':<22}{'median':>9}{'p90':>9}{'p99':>9}"]
    for call in ("admit", "settle"):
        for target in (empty, full):
            values: list[float] = getattr(target, call)
            lines.append(
                f"{call:<7}@ {target.rows:<13,}{statistics.median(values):>9.3f}"
                f"{percentile(values, 90):>9.3f}{percentile(values, 99):>9.3f}"
            )
    chat_empty, chat_full = chats
    lines += [
        "",
        f"{full.rows:,} rows vs {empty.rows:,} rows: full - empty, median of pairs (ms);"
        " full / empty, medians",
        f"  router.chat {paired_median(chat_empty.measured, chat_full.measured):+.3f}"
        f"  {statistics.median(chat_full.measured) / statistics.median(chat_empty.measured):.2f}x",
    ]
    for call in ("admit", "settle"):
        before, after = getattr(empty, call), getattr(full, call)
        lines.append(
            f"  {call:<11} {paired_median(before, after):+.3f}"
            f"  {statistics.median(after) / statistics.median(before):.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger rows to bulk-insert")
    parser.add_argument("--requests", type=int, default=2000, help="measured rounds")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded rounds first")
    parser.add_argument(
        "--database",
        choices=["sqlite-file", "memory"],
        default="sqlite-file",
        help="two fresh SQLite files in a temporary directory (default), or two in memory",
    )
    args = parser.parse_args()
    with ExitStack() as stack:
        ledgers = []
        for name in ("empty", "full"):
            router = Router.from_config(config(stack.enter_context(database_url(args.database))))
            stack.callback(router.close)
            key, secret = router.create_key(f"bench-{name}")
            ledgers.append(Ledger(router, key, secret))
        empty, full = ledgers
        seconds = bulk_insert(full.router, full.key, args.rows)
        for target in ledgers:
            target.rows = ledger_rows(target.router)
        chats = measure_chat(empty, full, args.requests, args.warmup)
        measure_store(ledgers, args.requests, args.warmup)
    print(f"llmrouter flat cost: {machine()}")
    print(
        f"echo provider; database {args.database}, one per ledger; {args.rows:,} rows of the "
        f"calling key bulk-inserted in {seconds:.1f} s ({BATCH_ROWS:,} per transaction, "
        f"{HISTORY_DAYS} days); {args.requests} measured rounds after {args.warmup} warm-up, "
        "both ledgers interleaved\n"
    )
    print(report(empty, full, chats))


if __name__ == "__main__":
    main()
