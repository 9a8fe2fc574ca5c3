"""OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (plain and SSE streaming).

Stateless clients resend the whole conversation; the engine still prefills only what it has not
cached: a request tied to a session (`X-Session-Id` header or `session_id` field) keeps its KV under
that id, and an untied request takes over the KV that an earlier request of the same conversation
left (engine/kv/store.py `adopt`). `usage.prompt_tokens_details.cached_tokens` reports the reuse.
Nothing is written to the transcript database: the client owns the conversation. docs/OPENAI.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import replace

from aiohttp import web

from chatserver import keys
from chatserver.auth import bearer_matches
from chatserver.errors import BadRequest
from chatserver.jsonbody import parse_json
from chatserver.openai.schemas import ChatCompletionRequest, parse_request
from chatserver.chat.websocket import turn_service_key
from engine.model.chat_format import ChatMessage
from engine.errors import ContextTooLong, EngineStopped, Overloaded
from engine.stream import TurnStream
from engine.turn import DoneEvent, ErrorEvent, TokenEvent, TurnRequest

log = logging.getLogger(__name__)

SESSION_PREFIX = "openai:"  # KV keys of requests tied to a client-chosen session id
ANONYMOUS_PREFIX = "openai-anon:"  # KV keys of untied requests, adoptable by the next request
_ROLES = {"developer": "system"}
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def _api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextTooLong):
        return ApiError(400, str(exc), "invalid_request_error", "context_length_exceeded", "messages")
    if isinstance(exc, BadRequest):
        return ApiError(400, str(exc), "invalid_request_error", None, getattr(exc, "param", None))
    if isinstance(exc, Overloaded):
        return ApiError(429, str(exc), "rate_limit_error", "overloaded")
    if isinstance(exc, EngineStopped):
        return ApiError(503, str(exc), "server_error", "unavailable")
    log.exception("unexpected error in the OpenAI API", exc_info=exc)
    return ApiError(500, "internal error", "server_error", "internal_error")


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
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
        message = _no_endpoint(request) if exc.status in (404, 405) else exc.reason
        error = ApiError(exc.status, message, "invalid_request_error", code)
    except Exception as exc:  # noqa: BLE001 - mapped to a typed error response
        error = _api_error(exc)
    return web.json_response(error.body(), status=error.status)


def _no_endpoint(request: web.Request) -> str:
    """A 404/405 message naming the request and the endpoints the router serves under /v1 (clients such
    as langchain read any bare 404 as "model not found")."""
    served = [f"{route.method} {route.resource.canonical}" for route in request.app.router.routes()
              if route.method != "HEAD" and route.resource is not None and route.resource.canonical.startswith("/v1/")]
    return f"no endpoint {request.method} {request.path[:200]}; this server serves: {', '.join(served)}"


def _check_key(request: web.Request) -> None:
    expected = request.app[keys.config].api_key
    if expected is None:
        return
    if not bearer_matches(request.headers.get("Authorization", ""), expected):
        raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "invalid_request_error",
                       "invalid_api_key")


def _model_id(request: web.Request) -> str:
    return request.app[keys.model].name


async def list_models(request: web.Request) -> web.Response:
    _check_key(request)
    return web.json_response({"object": "list", "data": [_model_card(request)]})


async def get_model(request: web.Request) -> web.Response:
    _check_key(request)
    if request.match_info["model"] != _model_id(request):
        raise ApiError(404, f"the model {request.match_info['model']!r} does not exist", "invalid_request_error",
                       "model_not_found", "model")
    return web.json_response(_model_card(request))


def _model_card(request: web.Request) -> dict:
    return {"id": _model_id(request), "object": "model", "created": request.app[keys.started_at],
            "owned_by": "chatserver"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    _check_key(request)
    data = parse_json(await request.read(), "the body")  # the one place a /v1 body is parsed
    body = parse_request(data)
    if body.model != _model_id(request):
        raise ApiError(404, f"the model {body.model!r} does not exist; GET /v1/models lists it",
                       "invalid_request_error", "model_not_found", "model")
    session_id = request.headers.get("X-Session-Id") or body.session_id
    if session_id is not None:
        body = parse_request({**data, "session_id": session_id})  # the header obeys the field's rules
    stream = await _start(request, body)
    completion_id = "chatcmpl-" + secrets.token_hex(12)
    if body.stream:
        return await _stream(request, body, stream, completion_id)
    return await _complete(request, body, stream, completion_id)


async def _start(request: web.Request, body: ChatCompletionRequest) -> TurnStream:
    turns = request.app[turn_service_key]
    config = turns.config
    messages = [ChatMessage(_ROLES.get(m.role, m.role), m.text) for m in body.messages]
    if messages[-1].role == "assistant":
        raise ApiError(400, "the last message must not be the assistant's (continuing an answer is not supported)",
                       "invalid_request_error", None, "messages")
    for m in messages:
        if len(m.content) > config.max_content_chars:
            raise ApiError(400, f"a message is longer than {config.max_content_chars} characters",
                           "invalid_request_error", None, "messages")
    if not any(m.role == "system" for m in messages) and config.system_prompt:
        messages.insert(0, ChatMessage("system", config.system_prompt))
    prompt_ids = await asyncio.to_thread(turns.chat_format.render, messages)
    n, limit = len(prompt_ids), turns.max_context
    if n >= limit:
        raise ContextTooLong(f"the messages are {n} tokens; the context window is {limit}")
    wanted = body.answer_limit
    if wanted is not None and wanted > config.engine.max_new_tokens:
        raise ApiError(400, f"max_tokens: must be at most {config.engine.max_new_tokens}", "invalid_request_error",
                       None, "max_tokens")
    if wanted is not None and n + wanted > limit:
        raise ContextTooLong(f"{n} prompt tokens + max_tokens {wanted} exceed the context window of {limit}")
    given = {k: v for k, v in (("temperature", body.temperature), ("top_p", body.top_p), ("seed", body.seed),
                                ("max_tokens", wanted)) if v is not None}
    params = replace(config.sampling, **given)
    params = replace(params, max_tokens=min(params.max_tokens, limit - n))
    if body.session_id is not None:
        key, adopt = SESSION_PREFIX + body.session_id, ""
    else:
        key, adopt = ANONYMOUS_PREFIX + secrets.token_hex(16), ANONYMOUS_PREFIX
    stream = turns.engine.admit()  # raises Overloaded
    stream.start(TurnRequest(key, prompt_ids, params, adopt_prefix=adopt))
    return stream


class _StopScanner:
    """Cuts the answer before the first stop sequence; holds back text that may begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        """Text that can be released now."""
        self.text += piece
        cut = min((i for s in self.stops if (i := self.text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.text = True, self.text[:cut]
            return self.flush()
        ready = len(self.text) - self.hold
        if ready <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:ready], ready
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


def _usage(done: DoneEvent, completion_tokens: int | None = None) -> dict:
    u = done.usage
    completion = u.completion_tokens if completion_tokens is None else completion_tokens
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": completion,
            "total_tokens": u.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


async def _events(stream: TurnStream, scanner: _StopScanner):
    """(text released, DoneEvent | None, finish_reason | None); cancels the turn at a stop sequence."""
    async for event in stream:
        if isinstance(event, TokenEvent):
            if scanner.stopped:
                continue
            text = scanner.push(event.text)
            if scanner.stopped:
                stream.cancel()
            yield text, None, None
        elif isinstance(event, DoneEvent):
            reason = "stop" if scanner.stopped else _FINISH.get(event.finish_reason, "stop")
            yield scanner.flush(), event, reason
        elif isinstance(event, ErrorEvent):
            raise ApiError(503 if event.code == "unavailable" else 500, event.message, "server_error", event.code)


async def _complete(request: web.Request, body: ChatCompletionRequest, stream: TurnStream, cid: str) -> web.Response:
    scanner = _StopScanner(body.stop_sequences)
    pieces, done, reason = [], None, None
    try:
        async for text, done_event, finish in _events(stream, scanner):
            pieces.append(text)
            if done_event is not None:
                done, reason = done_event, finish
    finally:
        if not stream.is_finished:
            stream.cancel()  # the client went away (handler cancelled): free the batch slot
    return web.json_response({
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                     "finish_reason": reason, "logprobs": None}],
        "usage": _usage(done),
    })


async def _stream(request: web.Request, body: ChatCompletionRequest, stream: TurnStream, cid: str) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> dict:
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if include_usage:
            out["usage"] = None
        return out

    async def send(payload: dict | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        await response.write(f"data: {data}\n\n".encode())

    await response.prepare(request)
    scanner = _StopScanner(body.stop_sequences)
    try:
        await send(chunk({"role": "assistant", "content": ""}))
        async for text, done, reason in _events(stream, scanner):
            if text:
                await send(chunk({"content": text}))
            if done is not None:
                await send(chunk({}, reason))
                if include_usage:
                    await send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                                "choices": [], "usage": _usage(done)})
        await send("[DONE]")
    except ApiError as exc:  # after the headers: the error travels as an event
        await send(exc.body())
        await send("[DONE]")
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        if not stream.is_finished:
            stream.cancel()
    return response


def setup(app: web.Application) -> None:
    app.middlewares.append(error_middleware)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
