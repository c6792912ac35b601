"""The one benchmark command: llmrouter beside LiteLLM, in process, over HTTP, streaming,
cold start, under load, on each database and with a long history, printed as one table.

    python -m tests.benchmarks                       # everything, about 10 minutes
    python -m tests.benchmarks --only inprocess,http --requests 500
    python -m tests.benchmarks --json /tmp/bench.json

tests/benchmarks/README.md says how each figure is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from . import cold_start, flat_cost, latency, server_db, streaming, throughput
from .report import Section, Table, Unavailable, machine
from .resources import Resources

SECTIONS = (
    "inprocess",
    "http",
    "streaming",
    "memory",
    "coldstart",
    "throughput",
    "serverdb",
    "flat",
)
#: a step's title in the table when it could not run at all
TITLES = {
    "inprocess": "in process, not streamed",
    "http": "over HTTP, not streamed",
    "streaming": "streaming",
    "memory": "streaming memory",
    "coldstart": "cold start",
    "throughput": "throughput",
    "serverdb": "per call on each database",
    "flat": "flat cost with history",
}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="llmrouter's overhead beside LiteLLM's, as one table.",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help="comma-separated sections to run, of: " + ", ".join(SECTIONS) + " (default: all)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=2000,
        help="measured rounds of the latency, database and flat sections "
        "(default 2000; streaming runs a tenth as many)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="unrecorded rounds first (default: a tenth of --requests)",
    )
    parser.add_argument(
        "--chunks", type=int, default=1000, help="content chunks of the timed stream (default 1000)"
    )
    parser.add_argument(
        "--memory-chunks",
        default="1000,100000",
        help="the short and long stream of the memory section",
    )
    parser.add_argument("--cold-runs", type=int, default=5, help="runs of each cold start")
    parser.add_argument("--clients", default="1,16,64", help="throughput's concurrency levels")
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="measured seconds per throughput level (default 5)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=1_000_000,
        help="ledger rows of the flat section's full ledger (default 1,000,000)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON to PATH")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.warmup is None:
        args.warmup = max(20, args.requests // 10)
    memory = [int(n) for n in args.memory_chunks.split(",")]
    if len(memory) != 2:
        parser.error("--memory-chunks takes two lengths, e.g. 1000,100000")
    args.memory_chunks = (memory[0], memory[1])
    args.clients = [int(n) for n in args.clients.split(",")]
    return args


def _load_warnings(about: dict) -> list[str]:
    one_minute = about["load_average"][0]
    cpus = about["cpus"] or 1
    if one_minute > cpus:
        return [
            f"the machine is loaded: load average {one_minute:.2f} over {cpus} CPUs before "
            "the run started; its figures are not to be trusted"
        ]
    if one_minute > cpus / 2:
        return [
            f"load average {one_minute:.2f} on {cpus} CPUs before the run: other work "
            "shares the machine, so compare the paired columns rather than raw times"
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    about = machine()
    about["settings"] = (
        f"--only {','.join(args.only)} --requests {args.requests} --warmup {args.warmup} "
        f"--chunks {args.chunks} --cold-runs {args.cold_runs} --seconds {args.seconds:g} "
        f"--rows {args.rows}"
    )
    table = Table(about, warnings=_load_warnings(about))
    rounds, warmup = args.requests, args.warmup
    stream_rounds, stream_warmup = max(20, rounds // 10), max(5, warmup // 10)
    only = set(args.only)
    log_dir = Path(tempfile.mkdtemp(prefix="llmrouter-bench-logs-"))
    started = time.monotonic()
    with ExitStack() as stack:
        resources = Resources(stack, log_dir)
        steps = {
            "inprocess": lambda: latency.run_in_process(table, resources, rounds, warmup),
            "http": lambda: latency.run_over_http(table, resources, rounds, warmup),
            "streaming": lambda: streaming.run_timing(
                table, resources, args.chunks, stream_rounds, stream_warmup
            ),
            "memory": lambda: streaming.run_memory(table, resources, args.memory_chunks),
            "coldstart": lambda: cold_start.run(table, resources, args.cold_runs),
            "throughput": lambda: throughput.run(table, resources, args.clients, args.seconds),
            "serverdb": lambda: server_db.run(table, resources, rounds, warmup),
            "flat": lambda: flat_cost.run(table, resources, args.rows, rounds, warmup),
        }
        for name, step in steps.items():
            if name not in only:
                continue
            title = TITLES[name]
            print(f"[{time.monotonic() - started:6.0f} s] {name} ...", file=sys.stderr, flush=True)
            try:
                step()
            except Unavailable as exc:
                _unavailable(table, title, str(exc))
            except Exception as exc:
                # one sub-benchmark's failure is a row of the table, not the end of the run
                (log_dir / f"{name}.error.log").write_text(traceback.format_exc())
                _unavailable(table, title, f"{type(exc).__name__}: {exc} (see {log_dir})")
    print(f"[{time.monotonic() - started:6.0f} s] done; logs in {log_dir}", file=sys.stderr)
    print(table.render())
    if args.json:
        Path(args.json).write_text(table.to_json())
    return 0


def _unavailable(table: Table, title: str, reason: str) -> None:
    section = Section(title, [])
    section.unavailable(title, reason)
    table.sections.append(section)


if __name__ == "__main__":
    sys.exit(main())
