"""The chat service: the one owner of a turn's life, under every transport.

A turn: check the message, insert the system prompt, render the conversation with the chat template,
check the context window and clamp max_tokens, admit it to the engine, persist the user message (a
stored session), stream the answer, persist the answer (also when cancelled or failed), and hold the
session's busy flag throughout. A stored session's turn belongs to the session, not to a connection: its
events are numbered in a TurnLog (chat/turn_log.py) and handed to every connection of the session, and it
outlives the connection that started it. The WebSocket handler (chat/websocket.py) and the OpenAI API
(openai/routes.py) only parse requests, call this, and format its events.

Stored sessions keep their transcript in the database; stateless requests (the OpenAI API) bring their
whole conversation and store nothing, but their KV is kept and reused like any session's.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace

from chatserver.chat import branching
from chatserver.chat.drafts import DraftCheckpoints
from chatserver.chat.sessions import LiveSession, LiveSessions, SessionListener
from chatserver.chat.turn_log import TurnLog, new_turn_id
from chatserver.config import ChatConfig
from chatserver.engine_client import EngineClient, TurnStream
from chatserver.errors import BadRequest, Busy
from chatserver.ops import TurnRate
from engine import ChatFormat, ChatMessage, ContextTooLong, DoneEvent, ErrorEvent, SamplingParams, TurnEvent, TurnRequest
from storage import Conversation, LeaseLost, StorageUnavailable, TranscriptStore

log = logging.getLogger(__name__)

_TITLE_CHARS = 60
SESSION_PREFIX = "openai:"  # KV of stateless requests tied to a client-chosen session id
ANONYMOUS_PREFIX = "openai-anon:"  # KV of untied stateless requests, adoptable by the next request
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "max_tokens")


class ChatService:
    def __init__(self, config: ChatConfig, engine: EngineClient, chat_format: ChatFormat,
                 transcripts: TranscriptStore, sessions: LiveSessions, turn_rate: TurnRate, max_new_tokens: int):
        self.config = config
        self.engine = engine
        self.chat_format = chat_format
        self.transcripts = transcripts
        self.sessions = sessions
        self.turn_rate = turn_rate
        self.max_new_tokens = max_new_tokens  # largest max_tokens a turn may ask for

    # ---- stored sessions ----

    def set_system(self, live: LiveSession, content: str) -> None:
        if live.has_turns or any(m.role == "system" for m in live.conversation.messages):
            raise BadRequest("the system prompt can only be set before the first turn")
        self._check_content(content)
        live.pending_system = content

    async def ask(self, live: LiveSession, content: str, sampling: dict,
                  origin: SessionListener | None = None) -> TurnLog:
        """A question after the active path's last message, and its answer."""
        return await self._start_turn(live, lambda c: branching.ask(c, content), sampling, origin)

    async def regenerate(self, live: LiveSession, message_id: int | None, sampling: dict,
                         origin: SessionListener | None = None) -> TurnLog:
        """A new answer beside answer `message_id` (None: the active path's last answer)."""
        return await self._start_turn(live, lambda c: branching.regenerate(c, message_id), sampling, origin)

    async def edit(self, live: LiveSession, message_id: int, content: str, sampling: dict,
                   origin: SessionListener | None = None) -> TurnLog:
        """A new version of user message `message_id` beside it, and its answer."""
        return await self._start_turn(live, lambda c: branching.edit(c, message_id, content), sampling, origin)

    async def switch(self, live: LiveSession, message_id: int) -> None:
        """Show the path through `message_id` (down to its newest leaf), to every connection of the session."""
        if live.is_busy:
            raise Busy("a turn is running in this session; switch when it has ended (or cancel it)")
        leaf = branching.switch(live.conversation, message_id)  # raises MessageNotFound: nothing changed
        async with live.lock:  # a turn starting meanwhile reads kv_branch after the engine has switched
            if leaf != live.conversation.active_leaf_id:
                await self.transcripts.set_active_leaf(live.id, leaf, lease=self.sessions.lease_of(live.id))
                live.conversation.active_leaf_id = leaf
            for conn in list(live.connections):
                conn.on_path_changed(live.conversation, None)
            live.kv_branch = await self.engine.switch_branch(live.id, live.kv_branch, str(leaf))

    async def _start_turn(self, live: LiveSession, place_of: Callable[[Conversation], branching.TurnPlace],
                          sampling: dict, origin: SessionListener | None) -> TurnLog:
        """Start a turn of a stored session where place_of(its conversation) puts it (chat/branching.py);
        return its log. The turn then belongs to the session, not to the connection that asked: each event is logged and handed to
        every connection of the session as it comes (SessionListener), the answer is stored when it ends
        (also cancelled or failed), and it runs to its end whoever is connected (LiveSessions cancels it
        after a while with nobody). sampling: the turn's own temperature, top_p, top_k, seed, max_tokens
        (None: the defaults). origin: the connection that asked; the others are told the turn started (a
        question after the active path) or shown the new path (regenerate, edit: to the origin too).
        On any error nothing is stored, the transcript is unchanged and the session is not busy."""
        if live.is_busy:
            raise Busy("a turn is already running in this session; send cancel or wait for done")
        place = place_of(live.conversation)  # raises MessageNotFound / BadRequest: nothing changed
        self.turn_rate.check(live.id)  # raises RateLimited: nothing stored
        live.is_busy = True  # before any await: a second turn from any connection is refused
        try:
            async with live.lock:
                previous_leaf = live.conversation.active_leaf_id
                asked = place.content if not place.is_new_answer else live.conversation.get(place.parent_id).content
                turn_log = TurnLog(new_turn_id(), asked, replica=self.sessions.replica)
                stream = await self._start_stored(live, place, sampling, turn_log)
                live.log, live.stream = turn_log, stream
                restore_leaf = previous_leaf if place.is_new_answer else None
                live.turn_task = asyncio.create_task(self._run(live, stream, turn_log, restore_leaf))
                on_path = place.is_new_answer or place.parent_id != previous_leaf
                for conn in list(live.connections):
                    if on_path:
                        conn.on_path_changed(live.conversation, turn_log)
                    elif conn is not origin:
                        conn.on_turn_started(turn_log)
        except BaseException:
            live.is_busy = False
            raise
        self.sessions.turn_started(live)
        return turn_log

    async def _start_stored(self, live: LiveSession, place: branching.TurnPlace, sampling: dict,
                            turn_log: TurnLog) -> TurnStream:
        conversation = live.conversation
        path = conversation.path(place.parent_id) if place.parent_id is not None else []
        new: list[ChatMessage] = []
        if not place.is_new_answer:
            self._check_content(place.content)
            system = live.pending_system if live.pending_system is not None else self.config.system_prompt
            if not path and system:  # a conversation starts (also an edit of its first question)
                new.append(ChatMessage("system", system))
            new.append(ChatMessage("user", place.content))
        history = [ChatMessage(m.role, m.content) for m in path]
        prompt_ids, params = await self._prepare(history + new, sampling)
        stream = self._admit(prompt_ids, params)
        # The prefill starts now and overlaps the database write; the caller reads the stream (and the
        # client sees tokens) only after the message is stored. If storing fails the turn is cancelled:
        # its KV then holds a prompt the transcript lacks, and the next turn keeps only the common prefix.
        stream.start(TurnRequest(live.id, prompt_ids, params, kv_branch=live.kv_branch,
                                 branch=str(place.continues or ""), new_branch=place.parent_id != place.continues))
        stored = []
        try:
            await self.sessions.store_if_new(live)
            parent = place.parent_id
            for m in new:
                num_tokens = await asyncio.to_thread(self.chat_format.count_tokens, m.content)
                first = m.role == "user" and not live.has_turns
                title = m.content.strip().splitlines()[0][:_TITLE_CHARS] if first else None
                stored.append(await self.transcripts.add_message(
                    live.id, m.role, m.content, num_tokens=num_tokens, title=title, parent_id=parent,
                    lease=self.sessions.lease_of(live.id)))
                parent = stored[-1].id
        except StorageUnavailable as exc:  # (LeaseLost, another replica serving the session, goes as it is)
            stream.cancel()
            log.warning("could not store the user message of session %s: %s", live.id, exc)
            raise StorageUnavailable("the message could not be stored; nothing was kept, try again") from exc
        except BaseException:
            stream.cancel()
            raise
        for m in stored:
            conversation.add(m)
        if place.is_new_answer:  # shown until its answer is stored (which makes it active in the database)
            conversation.active_leaf_id = place.parent_id
        turn_log.user_message_id = conversation.active_leaf_id
        live.pending_system = None
        return stream

    async def _run(self, live: LiveSession, stream: TurnStream, turn_log: TurnLog, restore_leaf: int | None) -> None:
        """The turn's events into its log and out to the session's connections. The answer is stored before
        the last event is published, under live.lock; then the session is free for its next turn.
        restore_leaf: the active leaf to show again if a new answer (regenerate) cannot be stored. While it
        streams, the answer so far is checkpointed every config.draft_seconds (chat/drafts.py); not that of
        a new answer, which a killed process loses (the earlier answer stays the stored active leaf)."""
        pieces: list[str] = []
        drafted = turn_log.user_message_id if restore_leaf is None else None
        drafts = DraftCheckpoints(self.transcripts, live.id, drafted, self.config.draft_seconds,
                                  lease=self.sessions.lease_of(live.id))
        try:
            async for event in stream:
                if isinstance(event, (DoneEvent, ErrorEvent)):
                    await drafts.close()  # no draft write lands after the answer that removes the draft
                    async with live.lock:
                        turn_log.is_answer_stored = await self._store_final(live, event, "".join(pieces), turn_log)
                        if not turn_log.is_answer_stored:
                            live.kv_branch = ""  # its KV holds an answer that has no name: it is not kept
                            if restore_leaf is not None:  # a new answer that was not stored: as before it
                                live.conversation.active_leaf_id = restore_leaf
                        _publish(live, turn_log, event)
                elif event.text:
                    pieces.append(event.text)
                    _publish(live, turn_log, event)
                    drafts.offer(pieces)
        finally:
            if not stream.is_finished:  # this task was cancelled: stop the engine's work too
                stream.cancel()
            live.stream = None
            live.is_busy = False
            self.sessions.turn_ended(live)

    async def _store_final(self, live: LiveSession, event: DoneEvent | ErrorEvent, partial: str,
                           turn_log: TurnLog) -> bool:
        """Store the answer of a turn that ended with `event`; False if it could not be (or need not be)."""
        try:
            if isinstance(event, DoneEvent):
                await self._store_answer(live, turn_log, event.text, event.finish_reason, event)
            else:
                await self._store_answer(live, turn_log, partial, "error", None)
        except (StorageUnavailable, LeaseLost) as exc:  # LeaseLost: another replica serves the session now
            log.warning("could not store the answer of session %s: %s", live.id, exc)
            return False
        return not live.is_deleted

    async def rename(self, live: LiveSession, title: str) -> str:
        """Set the session's title (stored with the session, which is stored now if it was not); returns the
        title as stored: stripped, on one line."""
        title = " ".join(title.split())
        if not title:
            raise BadRequest("title: must not be empty", param="title")
        await self.sessions.store_if_new(live)
        await self.transcripts.rename(live.id, title)
        return title

    async def delete(self, session_id: str, by: str) -> None:
        """Delete a session as a whole: its running turn is cancelled first, then its transcript and its KV
        in RAM and on disk go, then its connections are told (session_deleted) and closed.
        by: who deletes it ("its owner", "an operator"), for the connections' message."""
        live = await self.sessions.stop(session_id)
        await self.transcripts.delete(session_id)
        await self.engine.drop(session_id)
        if live is not None:  # told once everything is gone: a client that reconnects finds nothing
            await self.sessions.disconnect(live, by)

    async def _store_answer(self, live: LiveSession, turn_log: TurnLog, text: str, finish_reason: str,
                            done: DoneEvent | None) -> None:
        if live.is_deleted:
            return
        u = done.usage if done else None
        answer = await self.transcripts.add_message(
            live.id, "assistant", text, finish_reason=finish_reason, parent_id=turn_log.user_message_id,
            num_tokens=u.completion_tokens if u else None, prompt_tokens=u.prompt_tokens if u else None,
            cached_tokens=u.cached_tokens if u else None,
            session_tokens=u.prompt_tokens + u.completion_tokens if u else None,
            lease=self.sessions.lease_of(live.id),
        )
        live.conversation.add(answer)
        live.kv_branch = str(answer.id)  # the session's KV holds this path now
        turn_log.answer_id, turn_log.answer_siblings = answer.id, live.conversation.siblings(answer.id)

    # ---- stateless requests ----

    async def start_stateless(self, messages: list[ChatMessage], sampling: dict, session_id: str | None) -> TurnStream:
        """A turn on a conversation the client brings whole (nothing is stored). session_id: keep its KV
        under this client-chosen id; None: take over the KV an earlier request of the same conversation
        left, if any. The caller must cancel the stream if it stops reading early."""
        if messages[-1].role == "assistant":
            raise BadRequest("the last message must not be the assistant's (continuing an answer is not "
                             "supported)", param="messages")
        for m in messages:
            if len(m.content) > self.config.max_content_chars:
                raise BadRequest(f"a message is longer than {self.config.max_content_chars} characters", param="messages")
        prompt_ids, params = await self._prepare(self._with_system_prompt(messages), sampling)
        if session_id is not None:
            key, adopt = SESSION_PREFIX + session_id, ""
        else:
            key, adopt = ANONYMOUS_PREFIX + secrets.token_hex(16), ANONYMOUS_PREFIX
        stream = self._admit(prompt_ids, params)
        stream.start(TurnRequest(key, prompt_ids, params, adopt_prefix=adopt))
        return stream

    # ---- both ----

    def _with_system_prompt(self, conversation: list[ChatMessage]) -> list[ChatMessage]:
        if self.config.system_prompt and not any(m.role == "system" for m in conversation):
            return [ChatMessage("system", self.config.system_prompt)] + conversation
        return conversation

    async def _prepare(self, conversation: list[ChatMessage], sampling: dict) -> tuple[list[int], SamplingParams]:
        """Prompt token ids and sampling parameters, or BadRequest / ContextTooLong."""
        wanted = sampling.get("max_tokens")
        if wanted is not None and wanted > self.max_new_tokens:
            raise BadRequest(f"max_tokens: must be at most {self.max_new_tokens}", param="max_tokens")
        prompt_ids = await asyncio.to_thread(self.chat_format.render, conversation)  # ms for long histories
        n, limit = len(prompt_ids), self.engine.max_context
        if n >= limit:
            raise ContextTooLong(f"the conversation is {n} tokens; the context window is {limit}")
        if wanted is not None and n + wanted > limit:
            raise ContextTooLong(f"{n} prompt tokens + max_tokens {wanted} exceed the context window of {limit}")
        given = {k: v for k in _SAMPLING_FIELDS if (v := sampling.get(k)) is not None}
        params = replace(self.config.sampling, **given)
        return prompt_ids, replace(params, max_tokens=min(params.max_tokens, limit - n))

    def _admit(self, prompt_ids: list[int], params: SamplingParams) -> TurnStream:
        return self.engine.admit(prompt_ids, params.max_tokens)  # raises Overloaded: nothing stored

    def _check_content(self, content: str) -> None:
        if not content.strip():
            raise BadRequest("content: must not be empty", param="content")
        if len(content) > self.config.max_content_chars:
            raise BadRequest(f"content: longer than {self.config.max_content_chars} characters", param="content")


def _publish(live: LiveSession, turn_log: TurnLog, event: TurnEvent) -> None:
    seq = turn_log.append(event)
    for conn in list(live.connections):
        conn.on_turn_event(turn_log, seq, event)
