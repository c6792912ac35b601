"""Where ``router.chat()``'s in-process time goes: cProfile over many calls on a SQLite file
and the loopback upstream, summarised by phase (cumulative) and by library (self time).

    python -m tests.benchmarks.profile_chat --out /tmp/llmrouter-chat.prof
    python -m pstats /tmp/llmrouter-chat.prof        # to browse it further

The profile file is written outside the repository; cProfile slows every Python call, so
read its figures as shares of the call, not as latencies (those are the table's).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

from .contenders import router_chat
from .routers import SQLITE_FILE, databases
from .upstream import serve_upstream

#: phases of the pipeline, found by (file name, function name) in the profile
PHASES = {
    "the whole call (Router.complete)": [("router.py", "complete")],
    "authenticate the key": [("keys.py", "authenticate")],
    "parse the request (pydantic)": [("schemas.py", "parse_chat_request")],
    "resolve the model": [("router.py", "_resolve")],
    "admission (phases.admit + store)": [("phases.py", "admit")],
    "dispatch (adapter + HTTP)": [("dispatch.py", "chat")],
    "  of which requests.Session.request": [("sessions.py", "request")],
    "settlement (phases.settle + store)": [("phases.py", "settle")],
}
#: libraries, by a part of the file path (builtins by their name), for self time
LIBRARIES = [
    ("waiting on the upstream (socket reads)", ("recv_into", "_socket.socket")),
    ("sqlite3 driver (execute, commit)", ("sqlite3.",)),
    ("sqlalchemy", ("/sqlalchemy/",)),
    ("pydantic", ("/pydantic/", "/pydantic_core/", "pydantic_core.")),
    ("requests + urllib3 + http.client", ("/requests/", "/urllib3/", "/http/client.py")),
    ("json", ("/json/", "json.")),
    ("llmrouter", ("/llmrouter/",)),
]


def _library(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    for library, marks in LIBRARIES:
        if any(mark in where for mark in marks):
            return library
    return "other (stdlib, builtins)"


def summarise(stats: pstats.Stats, calls: int) -> str:
    entries = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    lines = [f"{calls} calls profiled; {total / calls * 1e6:.0f} us per call under cProfile", ""]
    lines.append(f"{'phase (cumulative, per call)':<40}{'us':>8}{'share':>8}")
    for phase, places in PHASES.items():
        cumulative = sum(
            ct
            for (filename, _, name), (_, _, _, ct, _) in entries.items()
            if any(filename.endswith(f) and name == n for f, n in places)
        )
        lines.append(f"{phase:<40}{cumulative / calls * 1e6:>8.0f}{cumulative / total:>8.0%}")
    by_library: dict[str, float] = {}
    for (filename, _, name), (_, _, tt, _, _) in entries.items():
        library = _library(filename, name)
        by_library[library] = by_library.get(library, 0.0) + tt
    lines += ["", f"{'library (self time, per call)':<40}{'us':>8}{'share':>8}"]
    for library, tt in sorted(by_library.items(), key=lambda item: -item[1]):
        lines.append(f"{library:<40}{tt / calls * 1e6:>8.0f}{tt / total:>8.0%}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="profiled calls (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="unprofiled calls first")
    parser.add_argument("--out", default="/tmp/llmrouter-chat.prof", help="the profile file")
    parser.add_argument("--top", type=int, default=25, help="rows of each pstats listing")
    parser.add_argument(
        "--database",
        default=SQLITE_FILE.name,
        help="SQLite file (default), PostgreSQL or MariaDB (their URL variables set)",
    )
    args = parser.parse_args()
    database = next(d for d in databases() if d.name == args.database)
    with serve_upstream() as upstream, router_chat(upstream, database, "profile") as chat:
        for _ in range(args.warmup):
            chat()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls):
            chat()
        profiler.disable()
    profiler.dump_stats(args.out)
    stats = pstats.Stats(args.out)
    print(summarise(stats, args.calls))
    for order in ("cumulative", "tottime"):
        listing = io.StringIO()
        pstats.Stats(args.out, stream=listing).strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"\n--- top {args.top} by {order} ---")
        print(listing.getvalue().split("\n\n", 1)[-1].strip())
    print(f"\nprofile written to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
