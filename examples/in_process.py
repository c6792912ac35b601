"""router.chat() in a plain Python program: no HTTP, same quotas, billing and errors.

Run: python examples/in_process.py
"""

from __future__ import annotations

import json

from llmrouter import RateLimitError, Router

router = Router.from_config(
    {
        "database_url": "sqlite://",  # in memory
        "quota": {"daily_requests": 4, "throttle_seconds": 600},
        "providers": [
            {
                "name": "echo",
                "kind": "echo",
                "models": [
                    {"id": "echo", "prompt_price": "0.000001", "completion_price": "0.000002"}
                ],
            }
        ],
    }
)
record, secret = router.create_key("example")

# 1. One call: an OpenAI chat.completion as a pydantic model.
reply = router.chat(
    model="echo#echo", messages=[{"role": "user", "content": "Hello!"}], api_key=secret
)
print("reply:", reply.choices[0].message.content)

# 2. A stream, closed after two words: leaving the `with` block releases the upstream
#    connection, and the call is billed `partial`, for what was delivered.
with router.chat(
    model="echo#echo",
    messages=[{"role": "user", "content": "one two three four five six"}],
    api_key=secret,
    stream=True,
) as stream:
    received = ""
    for chunk in stream:  # ChatCompletionChunk models
        received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        if len(received.split()) == 2:
            break
print("stream, closed early:", repr(received))

# 3. A tool call and its result, as in OpenAI's API: the model asks for the tool, the
#    program runs it and sends the result back in a `tool` message.
tools = [
    {
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
]
messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Paris?"}]
asked = router.chat(
    model="echo#echo", messages=messages, api_key=secret, tools=tools, tool_choice="required"
)
call = asked.choices[0].message.tool_calls[0]
print("tool call:", call.function.name, call.function.arguments)
messages += [
    asked.choices[0].message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear"})},
]
answered = router.chat(model="echo#echo", messages=messages, api_key=secret, tools=tools)
print("after the tool:", answered.choices[0].message.content)

# 4. The fair-use allowance (4 a day here) is used up: the next call takes the throttle
#    slot, the one after that is refused until the slot reopens.
try:
    router.chat(model="echo#echo", messages=[{"role": "user", "content": "fifth"}], api_key=secret)
    router.chat(model="echo#echo", messages=[{"role": "user", "content": "sixth"}], api_key=secret)
except RateLimitError as exc:
    print("throttled:", exc.message, "retry after", exc.retry_after, "s")

# 5. A prepaid balance lifts the throttle: calls are paid from it, to the nano-dollar.
router.top_up(record.id, "1.00")
paid = router.chat(
    model="echo#echo", messages=[{"role": "user", "content": "paid"}], api_key=secret
)
print("paid call:", paid.choices[0].message.content)
for row in router.usage():
    print(row)
router.close()
