"""What a client makes of a streamed answer (its text, its tool calls), and the tool the
tests ask for. Works on llmrouter's chunk models and the ``openai`` SDK's alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def streamed_text(chunks: Iterable[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assembled_tool_calls(chunks: Iterable[Any]) -> list[dict[str, Any]]:
    """The tool calls put together from the deltas by their index, as SDK users do: the
    first delta of a call brings id, type and name, every delta a piece of the arguments."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"arguments": ""})
                if delta.id:
                    call.update(id=delta.id, type=delta.type, name=delta.function.name)
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return [calls[i] for i in sorted(calls)]
