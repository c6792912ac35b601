"""Each contender of a comparison in a process of its own, driven in lockstep: the command
says "run", the lane makes one call, times it itself and sends back the measurement.

Separate processes keep one contender's background work off another's clock: LiteLLM hands
every completion to a logging thread, which in a shared process holds the GIL while the
next contender is being timed (measured here: +0.35 ms on a direct call that follows it).
Imports stay apart too: the command itself never imports LiteLLM.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .report import Unavailable
from .timing import interleave

#: a context manager that sets a contender up, yields its timed call, and cleans up after
Factory = Callable[..., AbstractContextManager[Callable[[], Any]]]
_READY_SECONDS = 900.0  # a lane may first bulk-insert a million ledger rows
_STOP_SECONDS = 60.0


class Lane:
    """One contender's process. Calling it runs one call there (with the arguments given,
    if any) and returns its measurement, or ``None`` when that call failed (``failures``
    counts them, ``first_error`` says why)."""

    def __init__(self, name: str, log_dir: Path, factory: Factory, *args: Any) -> None:
        self.name = name
        self.failures = 0
        self.first_error: str | None = None
        self.unavailable: str | None = None
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        log = log_dir / (name.replace(" ", "-").replace("/", "-") + ".log")
        self._process = context.Process(
            target=_serve, args=(child, str(log), factory, args), daemon=True
        )
        self._process.start()
        child.close()

    def wait_ready(self) -> bool:
        """Whether the lane set itself up; if not, ``unavailable`` says why."""
        if not self._conn.poll(_READY_SECONDS):
            self.unavailable = f"did not start within {_READY_SECONDS:.0f} s"
            return False
        try:
            kind, detail = self._conn.recv()
        except EOFError:
            kind, detail = "unavailable", f"its process exited ({self._process.exitcode})"
        if kind != "ready":
            self.unavailable = detail
            return False
        return True

    def __call__(self, *args: Any) -> Any:
        try:
            self._conn.send(("run", args))
            kind, detail = self._conn.recv()
        except (EOFError, OSError):
            kind, detail = "error", f"its process exited ({self._process.exitcode})"
        if kind == "ok":
            return detail
        self.failures += 1
        self.first_error = self.first_error or detail
        return None

    def problem(self, calls: int) -> str:
        """What went wrong, for the row's note ('' when nothing did)."""
        if self.unavailable:
            return f"not run: {self.unavailable}"
        if self.failures:
            return f"{self.failures} of {calls} calls failed: {self.first_error}"
        return ""

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send("stop")
                self._conn.poll(_STOP_SECONDS)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(_STOP_SECONDS)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()


@dataclass
class Contender:
    """One lane's measurements, a value per round (``None`` where its call failed), and
    what went wrong ('' when nothing did; then ``values`` may be empty)."""

    name: str
    values: list[Any] = field(default_factory=list)
    problem: str = ""

    @property
    def ran(self) -> bool:
        return any(v is not None for v in self.values)


@contextmanager
def lane(name: str, log_dir: Path, factory: Factory, *args: Any) -> Iterator[Lane]:
    """One lane, ready (or ``Unavailable`` saying why), closed at the end."""
    started = Lane(name, log_dir, factory, *args)
    try:
        if not started.wait_ready():
            raise Unavailable(started.unavailable)
        yield started
    finally:
        started.close()


#: a contender to run: its name and factory with arguments, or why it cannot run
Spec = tuple[str, Factory, tuple[Any, ...]] | tuple[str, Unavailable]


def compete(log_dir: Path, specs: Sequence[Spec], rounds: int, warmup: int) -> dict[str, Contender]:
    """Start every lane at once (their set-ups overlap), run the ready ones interleaved
    (``timing.interleave``), close them all; every spec gets a Contender."""
    results = {spec[0]: Contender(spec[0]) for spec in specs}
    with ExitStack() as stack:
        started = []
        for spec in specs:
            if len(spec) == 2:
                results[spec[0]].problem = f"not run: {spec[1]}"
                continue
            name, factory, args = spec
            lane = Lane(name, log_dir, factory, *args)
            stack.callback(lane.close)
            started.append(lane)
        ready = [lane for lane in started if lane.wait_ready()]
        measured = interleave(ready, rounds, warmup) if ready else []
        for lane, values in zip(ready, measured, strict=True):
            results[lane.name].values = values
        for lane in started:
            results[lane.name].problem = lane.problem(rounds + warmup)
    return results


def _serve(conn: Connection, log: str, factory: Factory, args: tuple[Any, ...]) -> None:
    # the lane's own chatter (LiteLLM's warnings, a driver's notices) goes to its log
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    try:
        with factory(*args) as call:
            conn.send(("ready", None))
            while (command := conn.recv()) != "stop":
                try:
                    conn.send(("ok", call(*command[1])))
                except Exception as exc:
                    traceback.print_exc()
                    conn.send(("error", _describe(exc)))
    except Unavailable as exc:
        _send_quietly(conn, ("unavailable", str(exc)))
    except Exception as exc:
        traceback.print_exc()
        _send_quietly(conn, ("unavailable", _describe(exc)))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}"


def _send_quietly(conn: Connection, message: tuple[str, str]) -> None:
    with suppress(BrokenPipeError, OSError):
        conn.send(message)
