"""The staged tool calls of the OpenAI-format fakes (OpenAI and Mistral): which tools a
turn calls. The last user message is split on " then "; after k tool-calling assistant
turns since it, the turn calls every tool stage k names (a stage naming none: text). On the
first turn a named ``tool_choice`` or a forcing one calls the first (or the named) tool;
``none`` never calls; ``parallel_tool_calls: false`` calls one at most."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any


def tools_to_call(
    body: dict[str, Any], text_of: Callable[[dict[str, Any]], str], forcing: Collection[str]
) -> list[dict[str, Any]]:
    """The ``function`` entries of ``body['tools']`` this turn calls."""
    tools = [t["function"] for t in body.get("tools") or []]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return []
    messages = body["messages"]
    asked = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    turns = sum(
        1 for m in messages[asked + 1 :] if m.get("role") == "assistant" and m.get("tool_calls")
    )
    if isinstance(choice, dict):
        tools = [t for t in tools if t["name"] == choice["function"]["name"]]
    if turns == 0 and (isinstance(choice, dict) or choice in forcing):
        wanted = tools[:1]
    else:
        stages = text_of(messages[asked]).split(" then ") if asked >= 0 else [""]
        stage = stages[turns] if turns < len(stages) else ""
        wanted = [t for t in tools if t["name"] in stage]
    return wanted[:1] if body.get("parallel_tool_calls") is False else wanted
