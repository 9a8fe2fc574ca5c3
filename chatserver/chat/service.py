"""One chat turn end to end: validate, render, admit, persist the user message, stream the
answer, persist the assistant message (also when cancelled or failed)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Awaitable, Callable

from sqlalchemy.exc import SQLAlchemyError

from chatserver.config import ServerConfig
from chatserver.errors import BadRequest, StorageUnavailable
from chatserver.chat.protocol import User
from chatserver.chat.sessions import LiveSession, SessionManager
from engine.model.chat_format import ChatFormat, ChatMessage
from engine.engine import Engine
from engine.errors import ContextTooLong
from engine.sampling import SamplingParams
from engine.stream import TurnStream
from engine.turn import DoneEvent, ErrorEvent, TokenEvent, TurnRequest
from storage.transcripts import SessionRepository

log = logging.getLogger(__name__)

Send = Callable[[dict], Awaitable[None]]
_TITLE_CHARS = 60


class TurnService:
    def __init__(self, config: ServerConfig, engine: Engine, chat_format: ChatFormat, repository: SessionRepository,
                 sessions: SessionManager, max_context: int):
        self.config = config
        self.engine = engine
        self.chat_format = chat_format
        self.repo = repository
        self.sessions = sessions
        self.max_context = max_context  # tokens: prompt + answer

    def set_system(self, live: LiveSession, content: str) -> None:
        if live.has_turns or any(m.role == "system" for m in live.messages):
            raise BadRequest("the system prompt can only be set before the first turn")
        self._check_content(content)
        live.pending_system = content

    def sampling_for(self, frame: User) -> SamplingParams:
        defaults = self.config.sampling
        limit = self.config.engine.max_new_tokens
        if frame.max_tokens is not None and frame.max_tokens > limit:
            raise BadRequest(f"max_tokens: must be at most {limit}")
        given = {k: v for k in ("temperature", "top_p", "top_k", "seed", "max_tokens")
                 if (v := getattr(frame, k)) is not None}
        return replace(defaults, **given)

    async def start(self, live: LiveSession, frame: User) -> TurnStream:
        """Everything up to the first token. On any error nothing is stored and the transcript is unchanged.

        The caller must have set live.is_busy (synchronously, before awaiting this).
        """
        assert live.is_busy
        self._check_content(frame.content)
        params = self.sampling_for(frame)
        system = [ChatMessage("system", live.pending_system)] if live.pending_system is not None else []
        new = system + [ChatMessage("user", frame.content)]
        conversation = live.messages + new
        if not any(m.role == "system" for m in conversation) and self.config.system_prompt:
            conversation = [ChatMessage("system", self.config.system_prompt)] + conversation
            new = [conversation[0]] + new
        prompt_ids = await asyncio.to_thread(self.chat_format.render, conversation)
        n = len(prompt_ids)
        if n >= self.max_context:
            raise ContextTooLong(f"the conversation is {n} tokens; the context window is {self.max_context}")
        if frame.max_tokens is not None and n + frame.max_tokens > self.max_context:
            raise ContextTooLong(f"{n} prompt tokens + max_tokens {frame.max_tokens} exceed the context window of {self.max_context}")
        params = replace(params, max_tokens=min(params.max_tokens, self.max_context - n))
        stream = self.engine.admit()  # raises Overloaded: nothing stored
        # The prefill starts now and overlaps the database write; the caller reads the stream (and the
        # client sees tokens) only after the message is stored. If storing fails the turn is cancelled:
        # its KV then holds a prompt the transcript lacks, and the next turn keeps only the common prefix.
        stream.start(TurnRequest(live.id, prompt_ids, params))
        try:
            await self.sessions.store_if_new(live)
            title = frame.content.strip().splitlines()[0][:_TITLE_CHARS] if not live.has_turns else None
            for m in new:
                await self.repo.add_message(live.id, m.role, m.content, title=title if m.role == "user" else None,
                                            num_tokens=await asyncio.to_thread(self.chat_format.count_tokens, m.content))
        except SQLAlchemyError as exc:
            stream.cancel()
            log.warning("could not store the user message of session %s: %s", live.id, exc)
            raise StorageUnavailable("the message could not be stored; nothing was kept, try again") from exc
        except BaseException:
            stream.cancel()
            raise
        live.messages.extend(new)
        live.pending_system = None
        return stream

    async def transcript(self, live: LiveSession) -> list[dict]:
        """Messages for a `session` frame; assistant messages carry how they ended."""
        if not live.is_stored:
            return []
        out = []
        for m in await self.repo.messages(live.id):
            item = {"role": m.role, "content": m.content}
            if m.role == "assistant":
                item["finish_reason"] = m.finish_reason
            out.append(item)
        return out

    async def stream_answer(self, live: LiveSession, stream: TurnStream, send: Send) -> None:
        """Forward events to `send` (errors from a vanished client are ignored) and persist the answer."""
        pieces: list[str] = []
        try:
            async for event in stream:
                if isinstance(event, TokenEvent):
                    if event.text:
                        pieces.append(event.text)
                        await _quiet(send, {"type": "token", "text": event.text})
                elif isinstance(event, DoneEvent):
                    await self._store_answer(live, event.text, event.finish_reason, event)
                    await _quiet(send, done_frame(event))
                elif isinstance(event, ErrorEvent):
                    await self._store_answer(live, "".join(pieces), "error", None)
                    await _quiet(send, {"type": "error", "code": event.code, "message": event.message})
        finally:
            if not stream.is_finished:  # we were cancelled (shutdown): stop the engine's work too
                stream.cancel()
            live.is_busy = False
            self.sessions.forget_if_idle(live)

    async def _store_answer(self, live: LiveSession, text: str, finish_reason: str, done: DoneEvent | None) -> None:
        live.messages.append(ChatMessage("assistant", text))
        if live.is_deleted:
            return
        usage = done.usage if done else None
        await self.repo.add_message(
            live.id, "assistant", text, finish_reason=finish_reason,
            num_tokens=usage.completion_tokens if usage else None,
            prompt_tokens=usage.prompt_tokens if usage else None,
            cached_tokens=usage.cached_tokens if usage else None,
            session_tokens=usage.prompt_tokens + usage.completion_tokens if usage else None,
        )

    def _check_content(self, content: str) -> None:
        if not content.strip():
            raise BadRequest("content: must not be empty")
        if len(content) > self.config.max_content_chars:
            raise BadRequest(f"content: longer than {self.config.max_content_chars} characters")


def done_frame(event: DoneEvent) -> dict:
    u, t = event.usage, event.timings
    return {
        "type": "done",
        "finish_reason": event.finish_reason,
        "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cached_tokens": u.cached_tokens},
        "timings": {"ttft_ms": round(t.ttft_ms, 2), "prefill_ms": round(t.prefill_ms, 2),
                    "decode_ms": round(t.decode_ms, 2)},
        "cache": event.cache,
    }


async def _quiet(send: Send, frame: dict) -> None:
    try:
        await send(frame)
    except (ConnectionError, RuntimeError):
        pass  # the client went away; the turn still completes and is stored
