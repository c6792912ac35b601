"""Non-streamed latency in two rotations, each beside a direct ``requests.post`` to the
upstream: in process, ``router.chat()`` on each database and ``litellm.completion()``;
over HTTP, the bare pass-through, our API and the LiteLLM proxy.

Two, not one: with the HTTP servers in the same rotation, the work they leave behind after
an answer (on 2 CPUs) raised every in-process figure — ours from 0.44 to 0.70 ms added,
LiteLLM's from 1.6 to 2.4 ms — while their ratio stayed put.

In process, "added" is over the direct call. Over HTTP the floor is the pass-through, the
one loopback hop through a Python WSGI server that no router can avoid, so "above floor"
is what the router itself costs there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import contenders
from .lanes import Contender, Spec, compete
from .report import Section, Table, Unavailable, ratio
from .resources import Resources
from .routers import ROUTED_MODEL, UPSTREAM_KEY, databases
from .servers import LITELLM_MASTER_KEY
from .timing import added, drift, spread
from .upstream import MODEL

DIRECT = "direct requests.post"
LITELLM = "litellm.completion()"
PASSTHROUGH = "bare WSGI pass-through"
OURS_HTTP = "llmrouter API"
PROXY = "LiteLLM proxy"
CHAT_PATH = "/v1/chat/completions"
IN_PROCESS_TARGET = (0.5, 0.10)  # ms added, and the ratio to LiteLLM's
HTTP_TARGET = (1.0, 0.10)  # ms above the floor, and the ratio to the proxy's


def _spec(name: str, make: Callable[[], tuple[Any, ...]], factory: Any) -> Spec:
    try:
        return name, factory, make()
    except Unavailable as exc:
        return name, exc


def _direct(upstream: str) -> Spec:
    return DIRECT, contenders.http_chat, (upstream + CHAT_PATH, MODEL, UPSTREAM_KEY)


def run_in_process(table: Table, resources: Resources, rounds: int, warmup: int) -> None:
    upstream = resources.upstream()
    specs: list[Spec] = [_direct(upstream)]
    routers = []
    for database in databases():
        name = f"router.chat(), {database.name}"
        routers.append(name)
        if database.unset:
            specs.append((name, Unavailable(f"{database.unset} is not set")))
        else:
            specs.append((name, contenders.router_chat, (upstream, database, "latency")))
    specs.append((LITELLM, contenders.litellm_completion, (upstream,)))
    results = compete(resources.log_dir, specs, rounds, warmup)
    _warn_if_noisy(table, results[DIRECT])
    table.sections.append(_in_process(results, routers, rounds))


def run_over_http(table: Table, resources: Resources, rounds: int, warmup: int) -> None:
    upstream = resources.upstream()

    def ours() -> tuple[Any, ...]:
        url, secret = resources.llmrouter()
        return url + CHAT_PATH, ROUTED_MODEL, secret

    specs = [
        _direct(upstream),
        _spec(
            PASSTHROUGH,
            lambda: (resources.passthrough() + CHAT_PATH, MODEL, UPSTREAM_KEY),
            contenders.http_chat,
        ),
        _spec(OURS_HTTP, ours, contenders.http_chat),
        _spec(
            PROXY,
            lambda: (resources.litellm_proxy() + CHAT_PATH, MODEL, LITELLM_MASTER_KEY),
            contenders.http_chat,
        ),
    ]
    results = compete(resources.log_dir, specs, rounds, warmup)
    _warn_if_noisy(table, results[DIRECT])
    table.sections.append(_over_http(results, rounds))


def _row(section: Section, contender: Contender, note: str = "", **cells: Any) -> None:
    if not contender.ran:
        section.add(contender.name, contender.problem or "not run")
        return
    note = "; ".join(part for part in (note, contender.problem) if part)
    section.add(contender.name, note, **spread(contender.values), **cells)


def _verdict(added_ms: float | None, ratio_text: str | None, target: tuple[float, float]) -> str:
    """``target <= 0.5 ms, <= 0.10x: met``, or which of the two was missed."""
    if added_ms is None:
        return ""
    limit, fraction = target
    missed = []
    if added_ms > limit:
        missed.append("ms")
    if ratio_text is None or float(ratio_text[:-1]) > fraction:
        missed.append("ratio" if ratio_text else "no LiteLLM figure")
    outcome = f"MISSED ({', '.join(missed)})" if missed else "met"
    return f"target <= {limit} ms, <= {fraction:.2f}x: {outcome}"


def _in_process(results: dict[str, Contender], routers: list[str], rounds: int) -> Section:
    section = Section(
        "in process, not streamed (ms)", ["median", "p95", "p99", "added", "vs LiteLLM"]
    )
    direct = results[DIRECT]
    litellm = results[LITELLM]
    litellm_added = added(litellm.values, direct.values) if litellm.ran else None
    _row(section, direct)
    for name in routers:
        contender = results[name]
        extra = added(contender.values, direct.values) if contender.ran else None
        share = ratio(extra, litellm_added)
        note = _verdict(extra, share, IN_PROCESS_TARGET) if name.endswith("SQLite file") else ""
        _row(section, contender, note, added=extra, **{"vs LiteLLM": share})
    _row(section, litellm, added=litellm_added)
    section.notes.append(
        f"{rounds} rounds; added = median over rounds of (row - direct); "
        "vs LiteLLM = added / litellm.completion()'s added"
    )
    return section


def _over_http(results: dict[str, Contender], rounds: int) -> Section:
    section = Section(
        "over HTTP, not streamed (ms)",
        ["median", "p95", "p99", "added", "above floor", "vs LiteLLM"],
    )
    direct, floor = results[DIRECT], results[PASSTHROUGH]
    proxy = results[PROXY]
    proxy_above = added(proxy.values, floor.values) if proxy.ran and floor.ran else None
    _row(section, direct)
    _row(section, floor, added=added(floor.values, direct.values) if floor.ran else None)
    ours = results[OURS_HTTP]
    if ours.ran:
        above = added(ours.values, floor.values) if floor.ran else None
        share = ratio(above, proxy_above)
        _row(
            section,
            ours,
            _verdict(above, share, HTTP_TARGET),
            added=added(ours.values, direct.values),
            **{"above floor": above, "vs LiteLLM": share},
        )
    else:
        _row(section, ours)
    _row(
        section,
        proxy,
        added=added(proxy.values, direct.values) if proxy.ran else None,
        **{"above floor": proxy_above},
    )
    section.notes.append(
        f"{rounds} rounds; gunicorn gthread, 1 worker x 8 threads for the "
        "pass-through and ours (our API on a SQLite file); the LiteLLM proxy as its CLI "
        "starts it (uvicorn, 1 worker), no database; above floor = median of (row - "
        "pass-through); vs LiteLLM = above floor / the proxy's above floor"
    )
    return section


def _warn_if_noisy(table: Table, direct: Contender) -> None:
    if not direct.ran:
        return
    figures = spread(direct.values)
    median, p95 = figures["median"], figures["p95"]
    assert median is not None and p95 is not None
    if p95 > 2 * median:
        table.warnings.append(
            f"the direct baseline is noisy: its p95 ({p95:.3f} ms) is {p95 / median:.1f}x "
            "its median; trust the paired 'added' columns over the raw ones, or rerun"
        )
    moved = drift([v for v in direct.values if v is not None])
    if moved > 0.2:
        table.warnings.append(
            f"the direct baseline drifted {moved:.0%} between the run's halves: the "
            "machine's load changed while it ran"
        )
