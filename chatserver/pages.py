"""The browser pages: the chat UI at / and the operator page at /admin (files under web/)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def admin_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "admin.html")


def setup(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/admin", admin_page)
    app.router.add_static("/static/", WEB_DIR, name="static")
