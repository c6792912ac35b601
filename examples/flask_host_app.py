"""An existing Flask service offering its users an OpenAI-compatible endpoint.

Run: python examples/flask_host_app.py, then point any OpenAI client at
http://127.0.0.1:5000/v1 with a key from `llmrouter keys create --name someone`.
"""

from __future__ import annotations

from flask import Flask, jsonify

from flask_ext import LLMRouter
from llmrouter import Router

app = Flask(__name__)


@app.get("/")
def home():  # the host app's own routes are untouched
    return jsonify(service="my-app", llm_api="/v1")


# The offline echo provider keeps this example runnable anywhere; use a TOML file such as
# examples/llmrouter.toml for real providers.
router = Router.from_config(None)
LLMRouter(app, router=router)

if __name__ == "__main__":
    app.run(port=5000, threaded=True)
