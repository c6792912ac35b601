"""The host's own tables; a user row remembers the router key that bills the user's calls."""

from __future__ import annotations

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

db = SQLAlchemy()


class User(UserMixin, db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    #: the router key id of this user (``router.create_key`` at sign-up); never the secret
    llm_key_id: Mapped[str | None] = mapped_column(String(64))
