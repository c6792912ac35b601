"""Interleaved rounds and the statistics the table reports from them.

Every comparison runs its contenders in rounds, one call of each per round, the order
rotating from round to round, so that all of them meet the same machine conditions at the
same moment; an added latency is then the median of the per-round differences, which
cancels most of a shared machine's drift (see README.md, "Why paired differences").
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def interleave(calls: Sequence[Callable[[], T]], rounds: int, warmup: int) -> list[list[T]]:
    """What each call returned (its own measurement) over ``rounds`` rounds after ``warmup``
    unrecorded ones; round ``i`` starts with call ``i mod len(calls)``."""
    for _ in range(warmup):
        for call in calls:
            call()
    results: list[list[T]] = [[] for _ in calls]
    for i in range(rounds):
        for j in range(len(calls)):
            k = (i + j) % len(calls)
            results[k].append(calls[k]())
    return results


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """The table's three percentiles of one contender (its failed calls left out)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"median": None, "p95": None, "p99": None}
    return {
        "median": statistics.median(kept),
        "p95": percentile(kept, 95),
        "p99": percentile(kept, 99),
    }


def added(measured: Sequence[float | None], *baselines: Sequence[float | None]) -> float | None:
    """The median over rounds of ``measured[i]`` minus every baseline's ``[i]``, over the
    rounds in which none of them failed."""
    differences = []
    for i, m in enumerate(measured):
        base = [b[i] for b in baselines if b[i] is not None]
        if m is not None and len(base) == len(baselines):
            differences.append(m - sum(base))
    return statistics.median(differences) if differences else None


def drift(values: Sequence[float]) -> float:
    """How far the second half's median is from the first half's, as a fraction of the
    first: a baseline that should be steady and is not says the machine changed."""
    half = len(values) // 2
    if half < 10:
        return 0.0
    first, second = statistics.median(values[:half]), statistics.median(values[half:])
    return abs(second - first) / first
