"""Seed 003's chat routes: ``POST /llm-providers/{id}/chat`` and the chat sessions of a
connection, in seed 003's envelope."""

from __future__ import annotations

from .route import Route

SESSION_ROUTES: tuple[Route, ...] = ()
