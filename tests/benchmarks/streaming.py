"""Streaming: what a router adds before the first chunk and to every chunk after it, over
a stream of many chunks, interleaved with the same stream read directly; and whether its
memory stays flat from a short stream to a very long one (each measured in a fresh
process of its own, by tracemalloc, after one unmeasured stream of the same length).
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from . import contenders
from .lanes import Contender, compete, lane
from .report import Section, Table, Unavailable, ratio
from .resources import Resources
from .routers import SQLITE_FILE, UPSTREAM_KEY
from .timing import added, spread
from .upstream import MODEL

DIRECT = "direct requests.post"
OURS = "router.chat(), SQLite file"
LITELLM = "litellm.completion()"
FIRST_CHUNK_TARGET_MS = 0.5
PER_CHUNK_TARGET_US = 20.0
FLAT_TARGET = 1.10  # the long stream's peak at most 10% above the short one's


def run_timing(table: Table, resources: Resources, chunks: int, rounds: int, warmup: int) -> None:
    upstream = resources.upstream()
    specs: Any = [
        (
            DIRECT,
            contenders.http_chat,
            (upstream + "/v1/chat/completions", MODEL, UPSTREAM_KEY, chunks),
        ),
        (OURS, contenders.router_chat, (upstream, SQLITE_FILE, "stream", chunks)),
        (LITELLM, contenders.litellm_completion, (upstream, chunks)),
    ]
    results = compete(resources.log_dir, specs, rounds, warmup)
    section = Section(
        f"streaming, {chunks:,} chunks",
        ["first chunk ms", "added ms", "whole ms", "added per chunk us", "vs LiteLLM"],
    )
    direct = results[DIRECT]
    first = {name: _part(c, 0) for name, c in results.items()}
    after = {name: _after_first(c) for name, c in results.items()}

    def per_chunk_us(name: str) -> float | None:
        if not results[name].ran or not direct.ran:
            return None
        extra = added(after[name], after[DIRECT])
        return None if extra is None else extra / chunks * 1000

    litellm_per_chunk = per_chunk_us(LITELLM)
    litellm_first = added(first[LITELLM], first[DIRECT]) if results[LITELLM].ran else None
    for name in (DIRECT, OURS, LITELLM):
        contender = results[name]
        if not contender.ran:
            section.add(name, contender.problem or "not run")
            continue
        first_added = added(first[name], first[DIRECT]) if name != DIRECT else None
        chunk_added = per_chunk_us(name) if name != DIRECT else None
        note = contender.problem
        if name == OURS:
            note = _verdict(first_added, chunk_added, litellm_first, litellm_per_chunk)
        section.add(
            name,
            note,
            **{
                "first chunk ms": spread(first[name])["median"],
                "added ms": first_added,
                "whole ms": spread(_part(contender, 1))["median"],
                "added per chunk us": chunk_added,
                "vs LiteLLM": ratio(chunk_added, litellm_per_chunk) if name == OURS else None,
            },
        )
    section.notes.append(
        f"{rounds} rounds, interleaved; each chunk decoded as its caller gets it (JSON "
        "directly, ChatCompletionChunk from router.chat, LiteLLM's ModelResponseStream); "
        "added per chunk = median of ((row's whole - first) - (direct's whole - first)) "
        f"/ {chunks:,}; vs LiteLLM compares the per-chunk figures"
    )
    table.sections.append(section)


def _part(contender: Contender, index: int) -> list[float | None]:
    return [None if v is None else v[index] for v in contender.values]


def _after_first(contender: Contender) -> list[float | None]:
    return [None if v is None else v[1] - v[0] for v in contender.values]


def _verdict(
    first: float | None,
    per_chunk: float | None,
    litellm_first: float | None,
    litellm_per_chunk: float | None,
) -> str:
    if first is None or per_chunk is None:
        return ""
    misses = []
    if first > FIRST_CHUNK_TARGET_MS:
        misses.append(f"first chunk {first - FIRST_CHUNK_TARGET_MS:.3f} ms over")
    if per_chunk > PER_CHUNK_TARGET_US:
        misses.append(f"per chunk {per_chunk - PER_CHUNK_TARGET_US:.1f} us over")
    target = f"target <= {FIRST_CHUNK_TARGET_MS} ms first, <= {PER_CHUNK_TARGET_US:.0f} us/chunk"
    return f"{target}: " + ("met" if not misses else "MISSED (" + ", ".join(misses) + ")")


@contextmanager
def stream_memory(who: str, upstream_url: str, chunks: int) -> Iterator[Any]:
    """A lane whose call streams as many chunks as it is asked for under tracemalloc and
    returns the peak of what was allocated meanwhile, in bytes; one unmeasured stream of
    ``chunks`` chunks first."""
    inner: AbstractContextManager[Any]
    if who == OURS:
        inner = contenders.router_chat(upstream_url, SQLITE_FILE, "memory", chunks)
    elif who == LITELLM:
        inner = contenders.litellm_completion(upstream_url, chunks)
    else:
        url = upstream_url + "/v1/chat/completions"
        inner = contenders.http_chat(url, MODEL, UPSTREAM_KEY, chunks)
    with inner as stream:
        stream()

        def measure(length: int) -> int:
            tracemalloc.start()
            try:
                stream(length)
                return tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        yield measure


def run_memory(table: Table, resources: Resources, lengths: tuple[int, int]) -> None:
    upstream = resources.upstream()
    short, long = lengths
    section = Section(
        "streaming memory (peak KiB)", [f"{short:,} chunks", f"{long:,} chunks", "growth"]
    )
    for who in (DIRECT, OURS, LITELLM):
        try:
            with lane(who, resources.log_dir, stream_memory, who, upstream, short) as measure:
                low, high = measure(short), measure(long)
                problem = measure.problem(2)
        except Unavailable as exc:
            section.unavailable(who, exc)
            continue
        if low is None or high is None:
            section.add(who, problem)
            continue
        growth = high / low
        note = problem
        if who == OURS:
            verdict = "met" if growth <= FLAT_TARGET else "MISSED"
            note = f"target growth <= {FLAT_TARGET:.2f}x: {verdict}"
        section.add(
            who,
            note,
            **{
                f"{short:,} chunks": round(low / 1024),
                f"{long:,} chunks": round(high / 1024),
                "growth": f"{growth:.2f}x",
            },
        )
    section.notes.append(
        "tracemalloc's peak while one stream is read, the short then the long one, in one "
        "fresh process per row after an unmeasured short stream"
    )
    table.sections.append(section)
