"""A chat completion's answer in OpenAI's shapes: one JSON object, or server-sent events (chunks, an
optional usage chunk, then [DONE]). Stop sequences cut the answer here, and end the turn."""

from __future__ import annotations

import json
import time

from aiohttp import web

from chatserver.engine_client import TurnStream
from chatserver.errors import openai_error_body
from chatserver.openai.schemas import ChatCompletionRequest
from engine import DoneEvent, EngineError, ErrorEvent, TokenEvent

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


class TurnFailed(EngineError):
    """The engine ended the turn with an error (carried as its event)."""

    def __init__(self, event: ErrorEvent):
        super().__init__(event.message)
        self.code = event.code


class StopScanner:
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


def usage(done: DoneEvent) -> dict:
    u = done.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


async def _events(stream: TurnStream, scanner: StopScanner):
    """(text released, DoneEvent | None, finish_reason | None); cancels the turn at a stop sequence;
    raises TurnFailed if the engine ends it with an error."""
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
            raise TurnFailed(event)


async def complete(body: ChatCompletionRequest, stream: TurnStream, cid: str) -> web.Response:
    scanner = StopScanner(body.stop_sequences)
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
        "usage": usage(done),
    })


async def stream_events(request: web.Request, body: ChatCompletionRequest, stream: TurnStream, cid: str) -> web.StreamResponse:
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
    scanner = StopScanner(body.stop_sequences)
    try:
        await send(chunk({"role": "assistant", "content": ""}))
        async for text, done, reason in _events(stream, scanner):
            if text:
                await send(chunk({"content": text}))
            if done is not None:
                await send(chunk({}, reason))
                if include_usage:
                    await send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                                "choices": [], "usage": usage(done)})
        await send("[DONE]")
    except TurnFailed as exc:  # after the headers: the error travels as an event
        await send(openai_error_body(exc))
        await send("[DONE]")
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        if not stream.is_finished:
            stream.cancel()
    return response
