"""Session-admin REST API under /api (bearer token; disabled, never open, without one)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel

from chatserver import keys
from chatserver.admin.schemas import (
    EvictResult,
    KVPlacement,
    Message,
    SessionDetail,
    SessionPage,
    SessionSummary,
)
from chatserver.auth import bearer_matches
from chatserver.admin.openapi import openapi_document
from storage.transcripts import SessionRecord

MAX_PAGE = 100
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # chatserver/auth.new_session_id


class ApiError(web.HTTPException):
    """An error with a JSON body {"error": {"code", "message"}}."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        self.status_code = status
        super().__init__(headers=headers, content_type="application/json",
                         text=json.dumps({"error": {"code": code, "message": message}}))


@web.middleware
async def api_errors(request: web.Request, handler):
    """JSON errors for everything under /api, including unknown paths and methods."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPNotFound:
        raise ApiError(404, "not_found", f"no such endpoint: {request.method} {request.path}") from None
    except web.HTTPMethodNotAllowed as exc:
        raise ApiError(405, "method_not_allowed", f"{request.method} not allowed; use {', '.join(sorted(exc.allowed_methods))}",
                       headers={"Allow": ",".join(sorted(exc.allowed_methods))}) from None


def _require_admin(request: web.Request) -> None:
    token = request.app[keys.config].admin_token
    if not token:
        raise ApiError(403, "admin_disabled",
                       "the admin API is disabled: start the server with --admin-token or CHATSERVER_ADMIN_TOKEN")
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type="application/json")


def _placement(app: web.Application, session_id: str) -> KVPlacement:
    store = app[keys.engine].store  # single-key reads: safe from the event loop
    return KVPlacement(tier=store.tier_of(session_id), bytes=store.bytes_of(session_id))


def _summary(app: web.Application, record: SessionRecord) -> SessionSummary:
    return SessionSummary(id=record.id, title=record.title, model=record.model, created_at=record.created_at,
                          updated_at=record.updated_at, num_messages=record.num_messages,
                          num_tokens=record.num_tokens, kv=_placement(app, record.id))


def _encode_cursor(record: SessionRecord) -> str:
    raw = json.dumps([record.updated_at.isoformat(), record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        updated, session_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(updated), str(session_id)
    except (ValueError, TypeError):
        raise ApiError(400, "bad_request", "cursor: not a cursor returned by this API") from None


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, "bad_request", f"{name}: must be an integer in [{low}, {high}]")
    return value


async def _record_or_404(request: web.Request) -> SessionRecord:
    session_id = request.match_info["session_id"]
    if not _SESSION_ID.fullmatch(session_id):  # ours are 32 hex digits: anything else cannot exist
        raise ApiError(404, "session_not_found", "no such session (session ids are 32 hexadecimal digits)")
    record = await request.app[keys.repository].get(session_id)
    if record is None:
        raise ApiError(404, "session_not_found", f"no session {session_id!r}")
    return record


async def list_sessions(request: web.Request) -> web.Response:
    _require_admin(request)
    limit = _int_param(request, "limit", 20, 1, MAX_PAGE)
    tier = request.query.get("tier")
    if tier not in (None, "ram", "disk", "none"):
        raise ApiError(400, "bad_request", "tier: must be ram, disk or none")
    after = _decode_cursor(request.query["cursor"]) if "cursor" in request.query else None
    found: list[SessionSummary] = []
    more = False
    async for record, has_more in _scan(request.app, limit, after):
        summary = _summary(request.app, record)
        if tier is None or summary.kv.tier == tier:
            found.append(summary)
            if len(found) == limit:
                more = has_more
                break
    next_cursor = _encode_cursor(record) if more else None
    return _json(SessionPage(sessions=found, next_cursor=next_cursor))


async def _scan(app: web.Application, page_size: int, after: tuple[datetime, str] | None):
    """Sessions newest first from `after`, with whether more rows may follow each one.
    (A tier filter may need several database pages to fill one API page.)"""
    repo = app[keys.repository]
    while True:
        page = await repo.list_page(page_size, after)
        for i, record in enumerate(page):
            yield record, i < len(page) - 1 or len(page) == page_size
        if len(page) < page_size:
            return
        after = (page[-1].updated_at, page[-1].id)


async def get_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    messages = await request.app[keys.repository].messages(record.id)
    live = request.app[keys.sessions].get_live(record.id)
    detail = SessionDetail(
        **_summary(request.app, record).model_dump(),
        messages=[Message(role=m.role, content=m.content, finish_reason=m.finish_reason, created_at=m.created_at)
                  for m in messages],
        connections=len(live.connections) if live else 0,
    )
    return _json(detail)


async def delete_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    await request.app[keys.sessions].terminate(record.id)  # tells connected clients, waits for their turns
    await request.app[keys.repository].delete(record.id)
    request.app[keys.engine].drop(record.id)
    return web.Response(status=204)


async def evict_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    drop = request.query.get("drop", "false").lower()
    if drop not in ("true", "false", "1", "0"):
        raise ApiError(400, "bad_request", "drop: must be true or false")
    engine = request.app[keys.engine]
    if drop in ("true", "1"):
        engine.drop(record.id)
        action, wanted = "dropped", ("none",)
    else:
        engine.spill(record.id)
        action, wanted = "spilled", ("disk", "none")
    for _ in range(200):  # the write runs on the KV store's I/O thread; wait for it (bounded)
        if engine.store.tier_of(record.id) in wanted:
            break
        await asyncio.sleep(0.05)
    return _json(EvictResult(id=record.id, action=action, kv=_placement(request.app, record.id)))


async def stats(request: web.Request) -> web.Response:
    _require_admin(request)
    engine = request.app[keys.engine]
    snapshot = await engine.call(engine.stats_snapshot)
    snapshot["server"] = {"websockets": len(request.app[keys.websockets]),
                          "live_sessions": request.app[keys.sessions].num_live}
    return web.json_response(snapshot)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def setup(app: web.Application) -> None:
    app.middlewares.append(api_errors)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
    app.router.add_post("/api/sessions/{session_id}/evict", evict_session)
    app.router.add_get("/api/stats", stats)
