"""A process that dies in the middle of a paid tool exchange: the rounds it settled stay
charged, the round in flight holds only its reservation until the sweep hands it back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from llmrouter import Router

PAID_ECHO = {
    "name": "echo",
    "kind": "echo",
    "models": [
        {
            "id": "echo-premium",
            "prompt_price": "0.00001",
            "completion_price": "0.00002",
            "max_output_length": 100,
            "premium": True,
        }
    ],
}

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from llmrouter import Router

    router = Router.from_config(json.loads(sys.argv[1]))

    @router.tool
    def stock_level() -> str:
        \"\"\"Stock.\"\"\"
        return "7 widgets"

    stream = router.chat(
        model="echo#echo-premium",
        messages=[{"role": "user", "content": "use stock_level"}],
        api_key=sys.argv[2],
        stream=True,
    )
    for chunk in stream:
        if any(c.delta.content for c in chunk.choices):
            os._exit(3)  # the second round is answering: its row is pending
    os._exit(0)
    """
)


def test_a_crash_in_round_two_loses_nothing_and_charges_nothing_twice(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'router.db'}",
        "providers": [PAID_ECHO],
    }
    router = Router.from_config(config)
    try:
        record, key = router.create_key("paid", credits="1")
    finally:
        router.close()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(config), key],
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 3, child.stderr.decode()[-2000:]

    router = Router.from_config(config)
    try:
        ledger = router.store.tables.ledger
        with router.store.engine.connect() as conn:
            (request_id,) = (
                conn.execute(ledger.select().with_only_columns(ledger.c.request_id))
                .scalars()
                .unique()
            )
        first, second = router.store.ledger_rows(request_id)
        assert (first.round, first.status) == (1, "ok") and first.charged_nanos > 0
        assert (second.round, second.status) == (2, "pending") and second.reserved_nanos > 0
        held = router.get_key(record.id).balance_nanos
        assert held == 1_000_000_000 - first.charged_nanos - second.reserved_nanos

        swept = router.sweep(older_than=0)
        assert [s.request_id for s in swept] == [request_id]
        first, second = router.store.ledger_rows(request_id)
        assert second.status == "abandoned" and second.charged_nanos == 0
        assert first.status == "ok"
        assert router.get_key(record.id).balance_nanos == 1_000_000_000 - first.charged_nanos
        assert router.sweep(older_than=0) == []  # nothing moves twice
        assert router.get_key(record.id).balance_nanos == 1_000_000_000 - first.charged_nanos
    finally:
        router.close()
