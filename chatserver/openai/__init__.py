"""The OpenAI-compatible API under /v1 (models, chat completions plain and streamed), in OpenAI's request
and error shapes, over the chat service's stateless turns."""

from chatserver.openai.routes import setup

__all__ = ["setup"]
