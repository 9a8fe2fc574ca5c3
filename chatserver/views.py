"""Plain HTTP views."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
