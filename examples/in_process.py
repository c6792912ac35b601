"""router.chat() in a plain Python program: no HTTP, same quotas, billing and errors.

Run: python examples/in_process.py
"""

from __future__ import annotations

from llmrouter import RateLimitError, Router

router = Router.from_config(
    {
        "database_url": "sqlite://",  # in memory
        "quota": {"daily_requests": 2, "throttle_seconds": 600},
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

reply = router.chat(
    model="echo#echo", messages=[{"role": "user", "content": "Hello!"}], api_key=secret
)
print("reply:", reply.choices[0].message.content)

with router.chat(
    model="echo#echo",
    messages=[{"role": "user", "content": "one two three"}],
    api_key=secret,
    stream=True,
) as stream:
    print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))

try:
    router.chat(model="echo#echo", messages=[{"role": "user", "content": "third"}], api_key=secret)
    router.chat(model="echo#echo", messages=[{"role": "user", "content": "fourth"}], api_key=secret)
except RateLimitError as exc:
    print("throttled:", exc.message, "retry after", exc.retry_after, "s")

router.top_up(record.id, "1.00")
paid = router.chat(
    model="echo#echo", messages=[{"role": "user", "content": "paid"}], api_key=secret
)
print("paid call:", paid.choices[0].message.content)
for row in router.usage():
    print(row)
