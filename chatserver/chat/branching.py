"""Where a turn goes in a session's conversation tree (storage/conversation.py), from what a client asks:
a question after the active leaf, a new answer to an earlier question (regenerate), a new version of an
earlier question (edit), or another path to show (switch). Message ids from the client are checked here:
an id that is not a message of this session is MessageNotFound, the wrong kind of message BadRequest."""

from __future__ import annotations

from dataclasses import dataclass

from chatserver.errors import BadRequest, MessageNotFound
from storage import Conversation, StoredMessage


@dataclass(frozen=True)
class TurnPlace:
    """parent_id: the message the turn's new user message follows (None: it starts the conversation), or,
    for a new answer (content None), the user message it answers. continues: the leaf of the path the
    turn starts from (it names the branch whose KV the turn may reuse; None for an empty conversation)."""

    parent_id: int | None
    content: str | None
    continues: int | None

    @property
    def is_new_answer(self) -> bool:
        return self.content is None


def ask(conversation: Conversation, content: str) -> TurnPlace:
    """A question after the active leaf."""
    leaf = conversation.active_leaf_id
    return TurnPlace(leaf, content, leaf)


def regenerate(conversation: Conversation, message_id: int | None) -> TurnPlace:
    """A new answer to the question that answer `message_id` answers (None: the last answer shown)."""
    if message_id is None:
        answers = [m for m in conversation.path() if m.role == "assistant"]
        if not answers:
            raise BadRequest("nothing to regenerate: this conversation has no answer yet", param="message_id")
        answer = answers[-1]
    else:
        answer = _message(conversation, message_id)
        if answer.role != "assistant":
            raise BadRequest(f"message_id: message {message_id} is a {answer.role} message; regenerate takes an "
                             "answer (use edit to change a question)", param="message_id")
    return TurnPlace(answer.parent_id, None, leaf_through(conversation, answer.id))


def edit(conversation: Conversation, message_id: int, content: str) -> TurnPlace:
    """A new version of user message `message_id`, beside it (same parent), then its answer."""
    question = _message(conversation, message_id)
    if question.role != "user":
        raise BadRequest(f"message_id: message {message_id} is a {question.role} message; edit takes a user "
                         "message (use regenerate for a new answer)", param="message_id")
    return TurnPlace(question.parent_id, content, leaf_through(conversation, question.id))


def switch(conversation: Conversation, message_id: int) -> int:
    """The leaf of the path through `message_id` to show."""
    return leaf_through(conversation, _message(conversation, message_id).id)


def leaf_through(conversation: Conversation, message_id: int) -> int:
    """The active leaf if the message is on the active path, else the leaf reached from it by newest children."""
    if any(m.id == message_id for m in conversation.path()):
        return conversation.active_leaf_id
    return conversation.newest_leaf(message_id)


def _message(conversation: Conversation, message_id: int) -> StoredMessage:
    message = conversation.get(message_id)
    if message is None:
        raise MessageNotFound(f"message_id: no message {message_id} in this session", param="message_id")
    return message
