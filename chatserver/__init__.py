"""The chat server: aiohttp app wiring the engine and storage together. Sub-packages: chat/ (the chat
service every transport uses, live sessions, the WebSocket protocol), openai/ (the /v1 API), admin/
(the /api admin REST API), ops/ (health, metrics, limits). The face below is loaded lazily, so that
`python -m chatserver chat` (the terminal client) never imports the engine."""

from __future__ import annotations

__all__ = ["ServerConfig", "create_app", "main"]


def __getattr__(name: str):
    if name == "create_app":
        from chatserver.app import create_app

        return create_app
    if name == "ServerConfig":
        from chatserver.config import ServerConfig

        return ServerConfig
    if name == "main":
        from chatserver.cli import main

        return main
    raise AttributeError(f"module 'chatserver' has no attribute {name!r}")
