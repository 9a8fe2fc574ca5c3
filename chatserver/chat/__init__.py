"""Chat: the one chat service every transport uses (the life of a turn), the live sessions and their
credentials, which replica of a cluster serves them, and the WebSocket protocol at /ws."""

from chatserver.chat.ownership import Ownership
from chatserver.chat.service import ChatService
from chatserver.chat.sessions import LiveSession, LiveSessions
from chatserver.chat.websocket import close_all, setup

__all__ = ["ChatService", "LiveSession", "LiveSessions", "Ownership", "close_all", "setup"]
