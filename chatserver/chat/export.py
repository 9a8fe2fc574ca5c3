"""A session's conversation as one JSON document (the `export` frame, docs/PROTOCOL.md): its active path,
or its whole tree with every branch."""

from __future__ import annotations

from chatserver.chat.protocol import message_items
from chatserver.chat.sessions import LiveSession
from storage import TranscriptStore


async def export(transcripts: TranscriptStore, live: LiveSession, tree: bool) -> dict:
    """id, title, model and creation time (ISO 8601, UTC; None until the session is stored), then either
    the active path's messages as in the `session` frame (tree False), or every message oldest first with
    the id of the active path's last message (tree True). Every message carries its creation time."""
    record = await transcripts.get(live.id) if live.is_stored else None
    conversation = live.conversation
    messages = conversation.path() if not tree else conversation.messages
    items = message_items(conversation, messages)
    for item, m in zip(items, messages):
        item["created_at"] = m.created_at.isoformat()
    out = {"session_id": live.id, "title": record.title if record else None,
           "model": record.model if record else None,
           "created_at": record.created_at.isoformat() if record else None, "messages": items}
    if tree:
        out["active_leaf_id"] = conversation.active_leaf_id
    return out
