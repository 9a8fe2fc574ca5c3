"""WebSocket frames (JSON text, discriminated by `type`). Documented in docs/PROTOCOL.md.

Parsing is strict about types (a string is not a number) and ignores unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chatserver.errors import BadRequest
from chatserver.jsonbody import parse_json
from chatserver.chat.turn_log import TurnLog
from engine import DoneEvent, ErrorEvent, TurnEvent
from storage import Conversation, StoredMessage

_ID = Annotated[str, Field(min_length=1, max_length=64)]
_TOKEN = Annotated[str, Field(min_length=1, max_length=256)]
_MESSAGE_ID = Annotated[int, Field(ge=1, lt=2**63)]
TITLE_CHARS = 200  # longest title a rename may set


class _Frame(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class LastSeq(_Frame):
    """The last frame of a turn a client holds."""

    turn_id: _ID
    seq: Annotated[int, Field(ge=0)]


class Hello(_Frame):
    type: Literal["hello"]
    session_id: _ID | None = None
    resume_token: _TOKEN | None = None
    last_seq: LastSeq | None = None


class System(_Frame):
    type: Literal["system"]
    content: str


class _Sampled(_Frame):
    """A frame that starts a turn, with the turn's own sampling parameters (None: the server's defaults)."""

    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=5.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None

    def sampling(self) -> dict:
        """The sampling fields this turn sets (None: the server's default)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
                "max_tokens": self.max_tokens}


class User(_Sampled):
    type: Literal["user"]
    content: str


class Regenerate(_Sampled):
    type: Literal["regenerate"]
    message_id: _MESSAGE_ID | None = None  # an answer; None: the last one on the active path


class Edit(_Sampled):
    type: Literal["edit"]
    message_id: _MESSAGE_ID  # a user message
    content: str


class Switch(_Frame):
    type: Literal["switch"]
    message_id: _MESSAGE_ID


class Cancel(_Frame):
    type: Literal["cancel"]


class Rename(_Frame):
    type: Literal["rename"]
    title: Annotated[str, Field(min_length=1, max_length=TITLE_CHARS)]


class DeleteSession(_Frame):
    type: Literal["delete_session"]


class Export(_Frame):
    type: Literal["export"]
    tree: bool = False  # every branch, not only the active path


AnyFrame = Hello | System | User | Regenerate | Edit | Switch | Cancel | Rename | DeleteSession | Export
ClientFrame = Annotated[AnyFrame, Field(discriminator="type")]
_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


def parse_frame(text: str) -> AnyFrame:
    """Raises BadRequest with a message naming the offending field."""
    data = parse_json(text, "frame")
    if not isinstance(data, dict):
        raise BadRequest("frame must be a JSON object")
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "frame"
        if err["type"] == "union_tag_invalid":
            kind = data["type"]  # echoed only as a short string (a deeply nested value has no safe repr)
            shown = repr(kind[:40]) if isinstance(kind, str) else "(not a string)"
            raise BadRequest(f"unknown frame type {shown}; expected hello, system, user, regenerate, edit, "
                             "switch, cancel, rename, delete_session or export") from None
        if err["type"] == "union_tag_not_found":
            raise BadRequest("frame has no 'type' field") from None
        raise BadRequest(f"{where}: {err['msg']}") from None


def session_frame(session_id: str, resume_token: str, resumed: bool, messages: list[dict], busy: bool,
                  model: str, turn: TurnLog | None = None, replica: str | None = None) -> dict:
    """turn: the turn whose frames follow this one (running, or finished and partly missed), or None.
    model: the served model's name; replica: this server's name in a cluster (omitted for a single server)."""
    shown = None if turn is None else {"turn_id": turn.turn_id, "running": not turn.is_finished}
    frame = {"type": "session", "session_id": session_id, "resume_token": resume_token, "resumed": resumed,
             "messages": messages, "busy": busy, "turn": shown, "model": model}
    return frame if replica is None else {**frame, "replica": replica}


def message_items(conversation: Conversation, path: list[StoredMessage] | None = None) -> list[dict]:
    """The messages of `path` (default: the active path) as sent to clients: id, parent_id, role, content,
    finish_reason (answers) and siblings (ids of the parent's children, this one included, oldest first)."""
    out = []
    for m in conversation.path() if path is None else path:
        item = {"id": m.id, "parent_id": m.parent_id, "role": m.role, "content": m.content}
        if m.role == "assistant":
            item["finish_reason"] = m.finish_reason
        item["siblings"] = conversation.siblings(m.id)
        out.append(item)
    return out


def path_frame(conversation: Conversation, turn: TurnLog | None) -> dict:
    """The active path changed: after regenerate or edit it ends with the question being answered, and the
    frames of `turn` follow; after switch, turn is None."""
    return {"type": "path", "messages": message_items(conversation), "turn_id": turn.turn_id if turn else None}


def turn_started_frame(turn: TurnLog) -> dict:
    return {"type": "turn", "turn_id": turn.turn_id, "content": turn.content, "user_message_id": turn.user_message_id}


def turn_frame(turn: TurnLog, seq: int, event: TurnEvent) -> dict:
    """The frame of a turn's event number `seq`: token, done, or error. done and error name where the
    answer was stored: message_id (None if it could not be), the question it answers, and its siblings."""
    if isinstance(event, (DoneEvent, ErrorEvent)):
        if isinstance(event, DoneEvent):
            frame = done_frame(event)
        else:
            frame = {"type": "error", "code": event.code, "message": event.message}
        frame.update(message_id=turn.answer_id, user_message_id=turn.user_message_id, siblings=turn.answer_siblings)
        if turn.replica is not None:
            frame["replica"] = turn.replica
    else:
        frame = {"type": "token", "text": event.text}
    return {**frame, "turn_id": turn.turn_id, "seq": seq}


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
