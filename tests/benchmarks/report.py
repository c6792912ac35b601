"""The one table the benchmark command prints: its sections, the machine and versions it
was measured on, the warnings that say when not to trust it, and its JSON form.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGES = (
    "llmrouter",
    "sqlalchemy",
    "pydantic",
    "requests",
    "gunicorn",
    "psycopg",
    "pymysql",
    "litellm",
)

Cell = float | int | str | None


class Unavailable(Exception):
    """A sub-benchmark that cannot run here; its message says why, in the table."""


@dataclass
class Section:
    """One block of the table: a title, its columns, and one row per thing measured. A row
    maps a column to a number or text; ``label`` names the row, ``note`` follows it."""

    title: str
    columns: list[str]
    rows: list[dict[str, Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, note: str = "", **cells: Cell) -> None:
        self.rows.append({"label": label, **cells, "note": note})

    def unavailable(self, label: str, reason: object) -> None:
        self.add(label, f"not run: {reason}")

    def render(self) -> str:
        labels = [str(row["label"]) for row in self.rows]
        width = max([len(label) for label in labels] + [len(self.title)])
        cells = [[_format(row.get(column)) for column in self.columns] for row in self.rows]
        widths = [
            max([len(column)] + [len(line[i]) for line in cells])
            for i, column in enumerate(self.columns)
        ]
        head = f"{self.title:<{width}}" + "".join(
            f"  {column:>{w}}" for column, w in zip(self.columns, widths, strict=True)
        )
        lines = [head, "-" * len(head)]
        for label, line, row in zip(labels, cells, self.rows, strict=True):
            text = f"{label:<{width}}" + "".join(
                f"  {cell:>{w}}" for cell, w in zip(line, widths, strict=True)
            )
            lines.append((text + "  " + str(row["note"])).rstrip())
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _format(value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return value


def ratio(value: float | None, of: float | None) -> str | None:
    """``value / of`` as ``0.12x``, or nothing when either is missing or ``of`` is not
    positive (a ratio to a negative or zero overhead means nothing)."""
    if value is None or of is None or of <= 0:
        return None
    return f"{value / of:.2f}x"


def machine() -> dict[str, Any]:
    """Where and with what the table was measured; the load average is read now."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "commit": _commit(),
        "packages": {name: _version(name) for name in PACKAGES},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


@dataclass
class Table:
    about: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        about = self.about
        packages = ", ".join(f"{name} {v}" for name, v in about["packages"].items())
        load = " ".join(f"{x:.2f}" for x in about["load_average"])
        lines = [
            f"llmrouter benchmarks, {about['date']}",
            f"machine: {about['machine']}; load average {load} at the start",
            f"{about['python']} on {about['platform']}; llmrouter commit {about['commit']}",
            f"versions: {packages}",
        ]
        if "settings" in about:
            lines.append(f"settings: {about['settings']}")
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        for section in self.sections:
            lines += ["", section.render()]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                **self.about,
                "warnings": self.warnings,
                "sections": [
                    {
                        "title": s.title,
                        "columns": s.columns,
                        "rows": s.rows,
                        "notes": s.notes,
                    }
                    for s in self.sections
                ],
            },
            indent=2,
        )
