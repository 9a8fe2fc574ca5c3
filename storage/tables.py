"""SQL schema: chat sessions, their messages, which form a tree (each message names its parent), and the
draft of each running turn's answer. Changes go through an alembic migration."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # public id
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the secret resume token
    title: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    num_tokens: Mapped[int] = mapped_column(Integer, default=0)  # conversation length after the last turn
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # the last message of the active path (messages form a tree: regenerated answers and edited questions
    # are siblings); None before the first message. No foreign key: a message row already names its session.
    active_leaf_id: Mapped[int | None] = mapped_column(Integer)

    messages: Mapped[list[MessageRow]] = relationship(
        back_populates="session", order_by="MessageRow.seq", cascade="all, delete-orphan", passive_deletes=True
    )


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("session_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # 0, 1, 2... within the session, in the order stored
    # the message this one follows (None: the conversation's first); a parent always has a lower seq
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))  # system | user | assistant
    content: Mapped[str] = mapped_column(Text)
    num_tokens: Mapped[int | None] = mapped_column(Integer)  # tokens of `content` alone
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)  # assistant: whole prompt of the turn
    cached_tokens: Mapped[int | None] = mapped_column(Integer)  # assistant: prompt tokens reused from KV
    finish_reason: Mapped[str | None] = mapped_column(String(16))  # assistant: stop | length | cancelled | error | interrupted
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[SessionRow] = relationship(back_populates="messages")


class TurnDraftRow(Base):
    """The answer of a session's running turn as streamed so far, checkpointed while it streams: what a
    process killed mid-turn leaves of the answer (storage/transcripts.py, close_unanswered). At most one
    per session; gone once the turn's answer is stored."""

    __tablename__ = "turn_drafts"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))  # the user message answered
    content: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionLeaseRow(Base):
    """Which replica of a cluster serves a session (storage/leases.py): at most one at a time. `epoch` grows
    by one whenever another replica takes the session; every commit of a turn names the epoch it holds,
    so a replica that lost the session (paused, partitioned) can write nothing more to it."""

    __tablename__ = "session_leases"

    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))  # the replica's name; None: released
    epoch: Mapped[int] = mapped_column(Integer, default=1)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # renewed while the session is active
