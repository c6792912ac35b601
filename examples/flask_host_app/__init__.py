"""An existing Flask service that offers its signed-in users an OpenAI-compatible endpoint.

The app was there before the router: an app factory, Flask-SQLAlchemy models, Flask-Login
sign-in and its own pages. Adding the router is the few lines marked "llmrouter" below;
the router's tables (``llmrouter_*``) live in the app's own database file, and its users'
calls are billed there.

Run: flask --app examples/flask_host_app run, then sign up at http://127.0.0.1:5000/.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_login import LoginManager, current_user

from flask_ext import LLMRouter

from .models import User, db
from .views import pages

login_manager = LoginManager()
login_manager.login_view = "pages.home"

# llmrouter: one extension object, registered on each app the factory builds.
llm = LLMRouter(db=db)


@llm.identity_loader
def router_key_of_signed_in_user() -> str | None:
    """The host's own login is the caller: the key id stored with the user."""
    return current_user.llm_key_id if current_user.is_authenticated else None


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return db.session.get(User, int(user_id))


def create_app(
    config: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY="dev only: set a real secret in production",
        # relative: Flask-SQLAlchemy puts it in the instance folder, and so does the router
        SQLALCHEMY_DATABASE_URI="sqlite:///host.db",
        # llmrouter: providers, quota and prices; the database is the app's (db= below)
        LLMROUTER_CONFIG={
            "providers": [
                {
                    "name": "echo",
                    "kind": "echo",
                    "models": [
                        {"id": "echo", "prompt_price": "0.000001", "completion_price": "0.000002"}
                    ],
                }
            ]
        },
    )
    app.config.from_mapping(config or {})
    db.init_app(app)
    login_manager.init_app(app)
    app.register_blueprint(pages)
    with app.app_context():
        db.create_all()  # the host's own tables; the router manages its own
    llm.init_app(app)  # llmrouter: the API at /v1, on db.engine
    return app
