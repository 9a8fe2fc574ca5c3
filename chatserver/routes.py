"""URL map."""

from __future__ import annotations

from aiohttp import web

from chatserver import pages
from chatserver.admin import routes as admin
from chatserver.chat.websocket import websocket_handler
from chatserver.openai import routes as openai_api
from chatserver.ops import views as ops


def setup(app: web.Application) -> None:
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", ops.healthz)
    app.router.add_get("/readyz", ops.readyz)
    app.router.add_get("/metrics", ops.metrics)
    admin.setup(app)
    openai_api.setup(app)
    pages.setup(app)
