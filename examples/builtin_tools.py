"""A built-in tool: the host's own Python function, offered to every model by one decorator.

The router runs `inventory` (a lookup in a local SQLite table) whenever a model calls it,
sends the model the result and returns the model's answer. The client is the plain
`openai` SDK: it never sees the tool, only an answer built from the table.

Run: python examples/builtin_tools.py
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

from openai import OpenAI
from werkzeug.serving import make_server

from llmrouter import Router
from llmrouter.http import RouterAPI

# The host's data: a products table in a SQLite file of its own.
workdir = tempfile.TemporaryDirectory()
database = Path(workdir.name) / "shop.db"
shop = sqlite3.connect(database)
shop.execute("CREATE TABLE products (sku TEXT, name TEXT, price TEXT, in_stock INTEGER)")
shop.executemany(
    "INSERT INTO products VALUES (?, ?, ?, ?)",
    [
        ("A-1", "espresso cup", "4.50", 12),
        ("A-2", "milk jug", "9.90", 3),
        ("B-7", "grinder", "89.00", 0),
    ],
)
shop.commit()
shop.close()

# The offline echo provider calls a tool whose name the question contains; a real model
# decides from the tool's description. The store is in memory here.
router = Router.from_config(
    {
        "database_url": "sqlite://",
        "providers": [{"name": "echo", "kind": "echo", "models": [{"id": "echo"}]}],
    }
)


@router.tool
def inventory(name_contains: str = "", in_stock_only: bool = True) -> list[dict[str, Any]]:
    """The shop's products with their prices (in USD) and how many are in stock.

    Args:
        name_contains: only products whose name contains this text.
        in_stock_only: leave out the products that are sold out.
    """
    query = "SELECT sku, name, price, in_stock FROM products WHERE name LIKE ?"
    if in_stock_only:
        query += " AND in_stock > 0"
    with closing(sqlite3.connect(database)) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(query, (f"%{name_contains}%",)).fetchall()
    return [dict(row) for row in rows]


# Serve the router's API (a WSGI app) on a free port of 127.0.0.1, in a thread.
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
server = make_server("127.0.0.1", 0, RouterAPI(router), threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
_, secret = router.create_key("example")

client = OpenAI(base_url=f"http://127.0.0.1:{server.server_port}/v1", api_key=secret)
question = [{"role": "user", "content": "What can I buy today? Check the inventory."}]
reply = client.chat.completions.create(model="echo#echo", messages=question)
print("answer:", reply.choices[0].message.content)
stream = client.chat.completions.create(model="echo#echo", messages=question, stream=True)
print("streamed:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))

server.shutdown()
router.close()
workdir.cleanup()
