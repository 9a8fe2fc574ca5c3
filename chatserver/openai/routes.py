"""OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (plain and SSE streaming), a thin
transport over the chat service's stateless turns (chat/service.py start_stateless).

Stateless clients resend the whole conversation; the engine still prefills only what it has not
cached: a request tied to a session (`X-Session-Id` header or `session_id` field) keeps its KV under
that id, and an untied request takes over the KV that an earlier request of the same conversation
left (engine/kv/sharing.py `adopt`). `usage.prompt_tokens_details.cached_tokens` reports the reuse.
Nothing is written to the transcript database: the client owns the conversation. docs/OPENAI.md.
"""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from chatserver import keys
from chatserver.auth import bearer_matches
from chatserver.errors import ChatError, InvalidApiKey, MethodNotAllowed, ModelNotFound, NotFound, RequestTooLarge
from chatserver.errors import code_of, openai_error_body, retry_after_of, status_of
from chatserver.jsonbody import parse_json
from chatserver.openai.responses import complete, stream_events
from chatserver.openai.schemas import parse_request
from engine import ChatMessage

log = logging.getLogger(__name__)

_ROLES = {"developer": "system"}


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every /v1 error, including aiohttp's own (413, 404, 405), in OpenAI's shape."""
    if not (request.path == "/v1" or request.path.startswith("/v1/")):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status in (404, 405):
            error: Exception = (NotFound if exc.status == 404 else MethodNotAllowed)(_no_endpoint(request))
        elif exc.status == 413:
            error = RequestTooLarge(exc.reason)
        else:
            error = ChatError(exc.reason)
            error.status = exc.status
    except Exception as exc:  # noqa: BLE001 - mapped to a typed error response
        error = exc
        if code_of(exc) == "internal_error":
            log.exception("unexpected error in the OpenAI API", exc_info=exc)
    seconds = retry_after_of(error)
    headers = {"Retry-After": str(seconds)} if seconds is not None else None
    return web.json_response(openai_error_body(error), status=status_of(error), headers=headers)


def _no_endpoint(request: web.Request) -> str:
    """A 404/405 message naming the request and the endpoints the router serves under /v1 (clients such
    as langchain read any bare 404 as "model not found")."""
    served = [f"{route.method} {route.resource.canonical}" for route in request.app.router.routes()
              if route.method != "HEAD" and route.resource is not None and route.resource.canonical.startswith("/v1/")]
    return f"no endpoint {request.method} {request.path[:200]}; this server serves: {', '.join(served)}"


def _check_key(request: web.Request) -> None:
    expected = request.app[keys.config].http.api_key
    if expected is None:
        return
    if not bearer_matches(request.headers.get("Authorization", ""), expected):
        raise InvalidApiKey("invalid or missing API key (Authorization: Bearer ...)")


def _model_id(request: web.Request) -> str:
    return request.app[keys.model].name


async def list_models(request: web.Request) -> web.Response:
    _check_key(request)
    return web.json_response({"object": "list", "data": [_model_card(request)]})


async def get_model(request: web.Request) -> web.Response:
    _check_key(request)
    if request.match_info["model"] != _model_id(request):
        raise ModelNotFound(f"the model {request.match_info['model']!r} does not exist", param="model")
    return web.json_response(_model_card(request))


def _model_card(request: web.Request) -> dict:
    return {"id": _model_id(request), "object": "model", "created": request.app[keys.started_at],
            "owned_by": "chatserver"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    _check_key(request)
    data = parse_json(await request.read(), "the body")  # the one place a /v1 body is parsed
    body = parse_request(data)
    if body.model != _model_id(request):
        raise ModelNotFound(f"the model {body.model!r} does not exist; GET /v1/models lists it", param="model")
    session_id = request.headers.get("X-Session-Id") or body.session_id
    if session_id is not None:
        body = parse_request({**data, "session_id": session_id})  # the header obeys the field's rules
    messages = [ChatMessage(_ROLES.get(m.role, m.role), m.text) for m in body.messages]
    sampling = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "max_tokens": body.answer_limit}
    stream = await request.app[keys.chat].start_stateless(messages, sampling, body.session_id)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    if body.stream:
        return await stream_events(request, body, stream, completion_id)
    return await complete(body, stream, completion_id)


def setup(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
