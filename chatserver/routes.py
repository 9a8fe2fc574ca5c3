"""URL map: each package adds its own routes."""

from __future__ import annotations

from aiohttp import web

from chatserver import admin, chat, openai, ops, pages


def setup(app: web.Application) -> None:
    chat.setup(app)  # /ws
    ops.setup(app)  # /healthz, /readyz, /metrics
    admin.setup(app)  # /api/...
    openai.setup(app)  # /v1/...
    pages.setup(app)  # /, /admin, /static/
