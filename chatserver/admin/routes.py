"""Session-admin REST API under /api (bearer token; disabled, never open, without one). Every error,
including unknown paths and methods, is JSON: {"error": {"code", "message"}}."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel

from chatserver import keys
from chatserver.admin.openapi import openapi_document
from chatserver.admin.schemas import AdminMessage, EvictResult, KVPlacement, SessionDetail, SessionPage, SessionSummary
from chatserver.auth import bearer_matches
from chatserver.errors import BadRequest, Forbidden, MethodNotAllowed, NotFound, SessionNotFound, Unauthorized
from chatserver.errors import admin_error_body, code_of, status_of
from storage import SessionRecord

log = logging.getLogger(__name__)

MAX_PAGE = 100
_EVICT_WAIT_S = 10.0  # an evict answers within this, with the placement it has then
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # chatserver/chat/credentials.py new_session_id


class AdminDisabled(Forbidden):
    code = "admin_disabled"


@web.middleware
async def api_errors(request: web.Request, handler):
    """JSON errors for everything under /api, including unknown paths and methods."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    headers: dict[str, str] = {}
    try:
        return await handler(request)
    except web.HTTPNotFound:
        error: Exception = NotFound(f"no such endpoint: {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        error, headers = MethodNotAllowed(f"{request.method} not allowed; use {', '.join(allowed)}"), {"Allow": ",".join(allowed)}
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - typed errors and bugs alike answer in JSON
        error = exc
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif code_of(exc) == "internal_error":
            log.exception("unexpected error in the admin API", exc_info=exc)
    return web.json_response(admin_error_body(error), status=status_of(error), headers=headers)


def _require_admin(request: web.Request) -> None:
    token = request.app[keys.config].http.admin_token
    if not token:
        raise AdminDisabled("the admin API is disabled: start the server with --admin-token or CHATSERVER_ADMIN_TOKEN")
    if not bearer_matches(request.headers.get("Authorization", ""), token):
        raise Unauthorized("missing or wrong bearer token")


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(status=status, text=model.model_dump_json(), content_type="application/json")


async def _placements(app: web.Application, session_ids: list[str]) -> dict[str, KVPlacement]:
    found = await app[keys.engine].kv_placement(session_ids)  # one query on the engine thread
    return {sid: KVPlacement(tier=tier, bytes=nbytes) for sid, (tier, nbytes) in found.items()}


def _summary(record: SessionRecord, kv: KVPlacement) -> SessionSummary:
    return SessionSummary(id=record.id, title=record.title, model=record.model, created_at=record.created_at,
                          updated_at=record.updated_at, num_messages=record.num_messages,
                          num_tokens=record.num_tokens, kv=kv)


def _encode_cursor(record: SessionRecord) -> str:
    raw = json.dumps([record.updated_at.isoformat(), record.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        updated, session_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(updated), str(session_id)
    except (ValueError, TypeError):
        raise BadRequest("cursor: not a cursor returned by this API") from None


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{name}: must be an integer in [{low}, {high}]")
    return value


async def _record_or_404(request: web.Request) -> SessionRecord:
    session_id = request.match_info["session_id"]
    if not _SESSION_ID.fullmatch(session_id):  # ours are 32 hex digits: anything else cannot exist
        raise SessionNotFound("no such session (session ids are 32 hexadecimal digits)")
    record = await request.app[keys.transcripts].get(session_id)
    if record is None:
        raise SessionNotFound(f"no session {session_id!r}")
    return record


async def list_sessions(request: web.Request) -> web.Response:
    _require_admin(request)
    limit = _int_param(request, "limit", 20, 1, MAX_PAGE)
    tier = request.query.get("tier")
    if tier not in (None, "ram", "disk", "none"):
        raise BadRequest("tier: must be ram, disk or none")
    after = _decode_cursor(request.query["cursor"]) if "cursor" in request.query else None
    found: list[SessionSummary] = []
    more = False
    async for record, kv, has_more in _scan(request.app, limit, after):
        if tier is None or kv.tier == tier:
            found.append(_summary(record, kv))
            if len(found) == limit:
                more = has_more
                break
    next_cursor = _encode_cursor(record) if more else None
    return _json(SessionPage(sessions=found, next_cursor=next_cursor))


async def _scan(app: web.Application, page_size: int, after: tuple[datetime, str] | None):
    """Sessions newest first from `after`, with their KV placement and whether more rows may follow each
    one. (A tier filter may need several database pages to fill one API page.)"""
    transcripts = app[keys.transcripts]
    while True:
        page = await transcripts.list_page(page_size, after)
        placements = await _placements(app, [record.id for record in page])
        for i, record in enumerate(page):
            yield record, placements[record.id], i < len(page) - 1 or len(page) == page_size
        if len(page) < page_size:
            return
        after = (page[-1].updated_at, page[-1].id)


async def get_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    conversation = await request.app[keys.transcripts].conversation(record.id)
    tree = _flag(request, "tree")
    messages = conversation.messages if tree else conversation.path()
    sessions = request.app[keys.sessions]
    live = sessions.get_live(record.id)
    kv = (await _placements(request.app, [record.id]))[record.id]
    lease_owner = None
    if sessions.ownership is not None:  # a cluster: the lease as stored (storage/leases.py)
        lease_owner, _ = await sessions.ownership.leases.owner_of(record.id)
    detail = SessionDetail(
        **_summary(record, kv).model_dump(),
        messages=[AdminMessage(id=m.id, parent_id=m.parent_id, role=m.role, content=m.content,
                               finish_reason=m.finish_reason, created_at=m.created_at) for m in messages],
        active_leaf_id=conversation.active_leaf_id,
        connections=len(live.connections) if live else 0,
        replica=sessions.replica,
        lease_owner=lease_owner,
    )
    return _json(detail)


async def delete_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    await request.app[keys.chat].delete(record.id, by="an operator")  # tells clients, cancels their turn first
    return web.Response(status=204)


def _flag(request: web.Request, name: str) -> bool:
    """A query flag: true/1 or false/0 (absent: false); anything else is bad_request naming it."""
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name}: must be true or false", param=name)
    return value in ("true", "1")


async def evict_session(request: web.Request) -> web.Response:
    _require_admin(request)
    record = await _record_or_404(request)
    engine = request.app[keys.engine]
    if _flag(request, "drop"):
        await engine.drop(record.id)
        action = "dropped"
    else:
        try:  # a session whose turn is running spills when the turn ends
            await asyncio.wait_for(engine.spill(record.id), _EVICT_WAIT_S)
        except TimeoutError:
            pass
        action = "spilled"
    kv = (await _placements(request.app, [record.id]))[record.id]
    return _json(EvictResult(id=record.id, action=action, kv=kv))


async def stats(request: web.Request) -> web.Response:
    _require_admin(request)
    snapshot = await request.app[keys.engine].stats()
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
