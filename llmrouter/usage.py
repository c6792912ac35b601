"""Usage reports as people and programs read them: JSON-ready rows, dates, a text table."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .billing import nanos_to_usd
from .errors import InvalidRequestError
from .store import UsageRow

_EPOCH = dt.date(1970, 1, 1)


def day_of(value: str, *, field: str) -> int:
    """``"2026-01-31"`` -> UTC day number, as the ledger stores it."""
    try:
        return (dt.date.fromisoformat(value) - _EPOCH).days
    except ValueError:
        raise InvalidRequestError(
            f"'{field}' must be a date like 2026-01-31", param=field
        ) from None


def date_of(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=day)).isoformat()


def row_dict(row: UsageRow) -> dict[str, Any]:
    """One report row; money as decimal strings of USD."""
    return {
        "key_id": row.key_id,
        "date": date_of(row.day),
        "provider": row.provider,
        "model": row.model,
        "requests": row.requests,
        "failed": row.failed,
        "abandoned": row.abandoned,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost": nanos_to_usd(row.cost_nanos),
        "charged": nanos_to_usd(row.charged_nanos),
    }


def report(rows: list[UsageRow]) -> dict[str, Any]:
    """The ``GET /v1/usage`` body: rows, and their totals."""
    return {
        "object": "list",
        "data": [row_dict(r) for r in rows],
        "total": {
            "requests": sum(r.requests for r in rows),
            "prompt_tokens": sum(r.prompt_tokens for r in rows),
            "completion_tokens": sum(r.completion_tokens for r in rows),
            "cost": nanos_to_usd(sum(r.cost_nanos for r in rows)),
            "charged": nanos_to_usd(sum(r.charged_nanos for r in rows)),
        },
    }


def table(rows: list[UsageRow]) -> str:
    """A fixed-width text table with a total line, for the terminal."""
    header = (
        "date",
        "key",
        "provider",
        "model",
        "requests",
        "failed",
        "abandoned",
        "prompt",
        "completion",
        "cost USD",
        "charged USD",
    )
    body = [
        (
            date_of(r.day),
            r.key_id,
            r.provider,
            r.model,
            str(r.requests),
            str(r.failed),
            str(r.abandoned),
            str(r.prompt_tokens),
            str(r.completion_tokens),
            nanos_to_usd(r.cost_nanos),
            nanos_to_usd(r.charged_nanos),
        )
        for r in rows
    ]
    totals = report(rows)["total"]
    body.append(
        (
            "total",
            "",
            "",
            "",
            str(totals["requests"]),
            str(sum(r.failed for r in rows)),
            str(sum(r.abandoned for r in rows)),
            str(totals["prompt_tokens"]),
            str(totals["completion_tokens"]),
            totals["cost"],
            totals["charged"],
        )
    )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = set(range(4, len(header)))

    def render(line: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(render(line) for line in [header, *body])
