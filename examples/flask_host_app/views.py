"""The host's own pages: sign up, sign in, a chat page that calls the API with the session
cookie (no secret in the browser), and the user's usage."""

from __future__ import annotations

from decimal import Decimal

from flask import Blueprint, jsonify, redirect, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash, generate_password_hash

from flask_ext import current_router

from .models import User, db

pages = Blueprint("pages", __name__)

CHAT_PAGE = """<!doctype html>
<title>Chat</title>
<input id="q" value="Hello!"> <button onclick="ask()">Ask</button>
<pre id="a"></pre>
<script>
async function ask() {
  // The session cookie signs the request in; the custom header is what lets a
  // state-changing cookie request through (another site's form cannot send it).
  const r = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-LLMRouter-CSRF": "1"},
    body: JSON.stringify({model: "echo#echo",
                          messages: [{role: "user", content: document.getElementById("q").value}]}),
  });
  const body = await r.json();
  document.getElementById("a").textContent = r.ok
    ? body.choices[0].message.content : body.error.message;
}
</script>
"""


@pages.get("/")
def home():
    if current_user.is_authenticated:
        return CHAT_PAGE
    fields = "email <input name=email> password <input name=password type=password>"
    return (
        f"<form method=post action=/login>{fields} <button>Sign in</button></form>"
        f"<form method=post action=/signup>{fields} <button>Sign up</button></form>"
    )


@pages.post("/signup")
def signup():
    email, password = request.form["email"], request.form["password"]
    # A router key per user: its quota and balance are the user's; the secret is never
    # needed, since the user's session is the caller (see the identity loader).
    record, _secret = current_router().create_key(email)
    user = User(email=email, password_hash=generate_password_hash(password), llm_key_id=record.id)
    db.session.add(user)
    db.session.commit()
    login_user(user)
    return redirect(url_for("pages.home"))


@pages.post("/login")
def login():
    user = db.session.execute(
        db.select(User).filter_by(email=request.form["email"])
    ).scalar_one_or_none()
    if user is None or not check_password_hash(user.password_hash, request.form["password"]):
        return "wrong email or password", 401
    login_user(user)
    return redirect(url_for("pages.home"))


@pages.post("/logout")
def logout():
    logout_user()
    return redirect(url_for("pages.home"))


@pages.get("/my-usage")
@login_required
def my_usage():
    rows = current_router().usage(key_id=current_user.llm_key_id)
    cost_nanos = sum(r.cost_nanos for r in rows)  # exact integer nano-dollars
    return jsonify(
        requests=sum(r.requests for r in rows), cost_usd=str(Decimal(cost_nanos).scaleb(-9))
    )
