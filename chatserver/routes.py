"""URL map."""

from __future__ import annotations

from aiohttp import web

from chatserver import admin, openai_api, views
from chatserver.ws import websocket_handler


def setup(app: web.Application) -> None:
    app.router.add_get("/", views.index)
    app.router.add_get("/admin", views.admin_page)
    app.router.add_get("/ws", websocket_handler)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    admin.setup(app)
    openai_api.setup(app)
    app.router.add_static("/static/", views.WEB_DIR, name="static")
