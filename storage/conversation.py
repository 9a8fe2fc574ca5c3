"""A conversation as a tree of messages: regenerated answers and edited questions are siblings (children of
the same parent), and the session shows one path from the first message to its active leaf.

Pure data, no database: TranscriptStore.conversation() builds one from the stored rows, and the chat server
keeps one per live session, adding each message as it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class StoredMessage:
    id: int  # unique in the database (not only in its session)
    parent_id: int | None  # None: the conversation's first message
    seq: int  # 0, 1, 2... within the session, in the order stored (a parent's seq is lower)
    role: str  # system | user | assistant
    content: str
    finish_reason: str | None  # assistant: stop | length | cancelled | error | interrupted
    created_at: datetime


@dataclass
class Conversation:
    """Every message of one session, oldest first, and the leaf of its active path (None: empty)."""

    messages: list[StoredMessage] = field(default_factory=list)
    active_leaf_id: int | None = None

    def __post_init__(self) -> None:
        self._by_id = {m.id: m for m in self.messages}
        self._children: dict[int | None, list[int]] = {}
        for m in self.messages:
            self._children.setdefault(m.parent_id, []).append(m.id)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._by_id

    def get(self, message_id: int) -> StoredMessage | None:
        return self._by_id.get(message_id)

    def add(self, message: StoredMessage, make_active: bool = True) -> None:
        """A message just stored (its parent is in the conversation, or None for the first)."""
        assert message.parent_id is None or message.parent_id in self._by_id
        self.messages.append(message)
        self._by_id[message.id] = message
        self._children.setdefault(message.parent_id, []).append(message.id)
        if make_active:
            self.active_leaf_id = message.id

    def path(self, leaf_id: int | None = None) -> list[StoredMessage]:
        """The messages from the first one to leaf_id (default: the active leaf), oldest first."""
        node = self._by_id.get(self.active_leaf_id if leaf_id is None else leaf_id)
        out = []
        while node is not None:
            out.append(node)
            node = self._by_id.get(node.parent_id) if node.parent_id is not None else None
        out.reverse()
        return out

    def siblings(self, message_id: int) -> list[int]:
        """Ids of the message's alternatives (its parent's children, itself included), oldest first."""
        return list(self._children.get(self._by_id[message_id].parent_id, []))

    def children(self, message_id: int | None) -> list[int]:
        return list(self._children.get(message_id, []))

    def newest_leaf(self, message_id: int) -> int:
        """The leaf reached from message_id by following the newest child at each step."""
        while kids := self._children.get(message_id):
            message_id = kids[-1]
        return message_id

    @property
    def has_user_message(self) -> bool:
        return any(m.role == "user" for m in self.messages)
