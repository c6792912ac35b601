"""Cold start: a fresh interpreter from its launch until its first answer — ``import
llmrouter`` + ``Router.from_config`` + the first ``router.chat()``, beside ``import
litellm`` + the first ``litellm.completion()`` and a bare ``requests.post`` as the floor.

Each run is a new process with nothing imported beforehand (its program is passed with
``-c``); the runs of the three alternate. The launch time is read from the system-wide
monotonic clock by the parent just before it starts the child, the answer time by the child.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from .contenders import LITELLM_OFFLINE
from .report import Section, Table, Unavailable, ratio
from .resources import Resources
from .routers import MESSAGES, ROUTED_MODEL, UPSTREAM_KEY, config
from .upstream import MODEL

_REPORT = """
import json, sys, time
print(json.dumps({"phases": phases, "end": time.monotonic(), "modules": len(sys.modules),
                  "flask": "flask" in sys.modules}))
"""
PROGRAMS = {
    "python + requests.post": """
import json, sys, time
t0 = time.monotonic()
import requests
t1 = time.monotonic()
requests.post(sys.argv[1] + "/v1/chat/completions", json=json.loads(sys.argv[2]),
              headers={"Authorization": "Bearer " + sys.argv[3]}).json()
t2 = time.monotonic()
phases = {"import": t1 - t0, "first call": t2 - t1}
""",
    "llmrouter": """
import json, sys, time
t0 = time.monotonic()
from llmrouter import Router
t1 = time.monotonic()
router = Router.from_config(json.loads(sys.argv[1]))
t2 = time.monotonic()
router.chat(api_key=sys.argv[3], **json.loads(sys.argv[2]))
t3 = time.monotonic()
phases = {"import": t1 - t0, "set-up": t2 - t1, "first call": t3 - t2}
""",
    "litellm": """
import json, sys, time
t0 = time.monotonic()
import litellm
t1 = time.monotonic()
litellm.completion(api_base=sys.argv[1] + "/v1", api_key=sys.argv[3], **json.loads(sys.argv[2]))
t2 = time.monotonic()
phases = {"import": t1 - t0, "first call": t2 - t1}
""",
}
_TIMEOUT_SECONDS = 180


def _once(program: str, arguments: list[str], env: dict[str, str]) -> dict:
    launched = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", PROGRAMS[program] + _REPORT, *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"exited {done.returncode}: {last[:160]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    answer["total"] = answer["end"] - launched
    return answer


def run(table: Table, resources: Resources, runs: int) -> None:
    upstream = resources.upstream()
    section = Section(
        "cold start (s)",
        ["median", "min", "max", "import", "set-up", "first call", "modules", "vs LiteLLM"],
    )
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
    with tempfile.TemporaryDirectory(prefix="llmrouter-bench-cold-") as directory:
        settings = config(upstream, "sqlite:///" + os.path.join(directory, "cold.db"))
        from llmrouter import Router

        # the database and its key exist already, as in a deployment
        router = Router.from_config(settings)
        try:
            _, secret = router.create_key("bench-cold")
        finally:
            router.close()
        plans = {
            "python + requests.post": ([upstream, json.dumps(body), UPSTREAM_KEY], {}),
            "llmrouter": (
                [json.dumps(settings), json.dumps({**body, "model": ROUTED_MODEL}), secret],
                {},
            ),
            "litellm": (
                [upstream, json.dumps({**body, "model": "openai/" + MODEL}), UPSTREAM_KEY],
                LITELLM_OFFLINE,
            ),
        }
        if not _installed("litellm"):
            plans.pop("litellm")
        answers: dict[str, list[dict]] = {name: [] for name in plans}
        problems: dict[str, str] = {}
        for _ in range(runs):
            for name, (arguments, env) in plans.items():
                if name in problems:
                    continue
                try:
                    answers[name].append(_once(name, arguments, env))
                except (Unavailable, subprocess.TimeoutExpired, ValueError) as exc:
                    problems[name] = str(exc)
    medians = {
        name: statistics.median(a["total"] for a in found)
        for name, found in answers.items()
        if found
    }
    for name in PROGRAMS:
        label = {
            "llmrouter": "llmrouter: import + from_config + chat()",
            "litellm": "litellm: import + completion()",
        }.get(name, name)
        found = answers.get(name, [])
        if not found:
            section.add(label, "not run: " + problems.get(name, "litellm is not installed"))
            continue
        totals = [a["total"] for a in found]
        phases = {
            phase: statistics.median(a["phases"][phase] for a in found)
            for phase in found[0]["phases"]
        }
        share = ratio(medians[name], medians.get("litellm")) if name == "llmrouter" else None
        note = problems.get(name, "")
        if name == "llmrouter":
            flask = "Flask imported" if found[0]["flask"] else "no Flask"
            verdict = (
                ""
                if share is None
                else "target <= 0.10x: "
                + ("met" if medians[name] / medians["litellm"] <= 0.10 else "MISSED")
            )
            note = "; ".join(part for part in (flask, verdict, note) if part)
        section.add(
            label,
            note,
            median=medians[name],
            min=min(totals),
            max=max(totals),
            modules=found[0]["modules"],
            **{"vs LiteLLM": share, **phases},
        )
    section.notes.append(
        f"{runs} runs each, alternating; median = launch to first answer, interpreter start "
        "included; phases are medians too; the database and key exist beforehand; LiteLLM "
        "with LITELLM_LOCAL_MODEL_COST_MAP=True (offline: no cost-map download)"
    )
    table.sections.append(section)


def _installed(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None
