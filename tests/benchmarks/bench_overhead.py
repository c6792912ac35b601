"""The latency ``router.chat()`` adds to a call to a loopback OpenAI-compatible upstream,
measured as interleaved pairs against a direct ``requests`` call with the same body.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests

from llmrouter import Router
from tests.benchmarks.upstream import MODEL, serve_upstream

UPSTREAM_KEY = "sk-bench-upstream-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
TARGET_MS = 1.0
STRETCH_MS = 0.5


@dataclass(frozen=True)
class Pairs:
    """Latencies in ms of interleaved calls: ``baseline[i]`` and ``measured[i]`` ran together."""

    baseline: list[float]
    measured: list[float]

    @property
    def added_paired(self) -> float:
        return statistics.median(m - b for m, b in zip(self.measured, self.baseline, strict=True))

    @property
    def added_medians(self) -> float:
        return statistics.median(self.measured) - statistics.median(self.baseline)

    @property
    def ratio(self) -> float:
        return statistics.median(self.measured) / statistics.median(self.baseline)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def elapsed_ms(call: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e6


def interleave(calls: Sequence[Callable[[], object]], count: int, warmup: int) -> list[list[float]]:
    """Latencies in ms of each call over ``count`` rounds (one call of each per round) after
    ``warmup`` unrecorded rounds; round ``i`` starts with call ``i mod len(calls)``."""
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for i in range(count):
        for j in range(len(calls)):
            k = (i + j) % len(calls)
            times[k].append(elapsed_ms(calls[k]))
    return times


@contextmanager
def database_url(choice: str) -> Iterator[str]:
    """``sqlite-file`` (a fresh file in a temporary directory), ``memory``, or a URL as is."""
    if choice == "sqlite-file":
        with tempfile.TemporaryDirectory(prefix="llmrouter-bench-") as directory:
            yield "sqlite:///" + os.path.join(directory, "bench.db")
    elif choice == "memory":
        yield "sqlite://"
    else:
        yield choice


def machine() -> str:
    return (
        f"{datetime.now(UTC):%Y-%m-%d}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )


def quota() -> dict[str, int]:
    """A daily allowance far beyond what a benchmark sends, so no call is ever throttled."""
    return {"daily_requests": 10_000_000}


def config(upstream_url: str, database: str) -> dict[str, Any]:
    return {
        "database_url": database,
        "quota": quota(),
        "providers": [
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
                        "max_output_length": 16384,
                    }
                ],
            }
        ],
    }


def measure(upstream_url: str, database: str, count: int, warmup: int) -> dict[str, Pairs]:
    router = Router.from_config(config(upstream_url, database))
    session = requests.Session()
    try:
        _, api_key = router.create_key("bench")
        url = upstream_url + "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}

        def direct() -> None:
            session.post(url, json=body, headers=headers).json()

        def routed() -> None:
            router.chat(model=f"bench#{MODEL}", messages=MESSAGES, api_key=api_key, max_tokens=16)

        def direct_stream() -> None:
            with session.post(url, json=streamed, headers=headers, stream=True) as response:
                for line in response.iter_lines():
                    if line.startswith(b"data: {"):
                        json.loads(line[6:])

        def routed_stream() -> None:
            chunks = router.chat(
                model=f"bench#{MODEL}",
                messages=MESSAGES,
                api_key=api_key,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
            for _ in chunks:
                pass

        return {
            "chat": Pairs(*interleave([direct, routed], count, warmup)),
            "stream": Pairs(*interleave([direct_stream, routed_stream], count, warmup)),
        }
    finally:
        session.close()
        router.close()


def verdict(added_ms: float) -> str:
    if added_ms <= STRETCH_MS:
        return "met (stretch)"
    return "met" if added_ms <= TARGET_MS else "MISSED"


def report(results: dict[str, Pairs]) -> str:
    lines = [
        f"{'':<8}{'':<8}{'median':>9}{'p90':>9}{'p99':>9}   (ms)",
    ]
    for mode, pairs in results.items():
        for who, values in (("direct", pairs.baseline), ("router", pairs.measured)):
            lines.append(
                f"{mode:<8}{who:<8}{statistics.median(values):>9.3f}"
                f"{percentile(values, 90):>9.3f}{percentile(values, 99):>9.3f}"
            )
    lines += [
        "",
        "added latency, router - direct (ms)",
        f"{'':<8}{'median of pairs':>18}{'diff of medians':>18}{'ratio':>8}   target <= 1 ms",
    ]
    for mode, pairs in results.items():
        lines.append(
            f"{mode:<8}{pairs.added_paired:>18.3f}{pairs.added_medians:>18.3f}"
            f"{pairs.ratio:>7.2f}x   {verdict(pairs.added_paired)}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="measured pairs per row")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded pairs per row first")
    parser.add_argument(
        "--database", default="sqlite-file", help="sqlite-file (default), memory, or a URL"
    )
    args = parser.parse_args()
    with serve_upstream() as upstream_url, database_url(args.database) as database:
        results = measure(upstream_url, database, args.requests, args.warmup)
    kind = args.database if args.database in ("sqlite-file", "memory") else "URL"
    print(f"llmrouter overhead: {machine()}")
    print(
        f"{args.requests} interleaved pairs per row after {args.warmup} warm-up pairs; "
        f"database {kind}; upstream on 127.0.0.1 in its own process\n"
    )
    print(report(results))


if __name__ == "__main__":
    main()
