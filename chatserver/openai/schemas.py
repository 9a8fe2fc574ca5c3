"""Request shape of POST /v1/chat/completions (OpenAI Chat Completions), validated with pydantic.

Unknown fields are ignored, as OpenAI-compatible servers do; fields we cannot honour (n > 1,
tools, content parts other than text) are refused with a 400 naming the parameter. Documented in docs/OPENAI.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from chatserver.errors import BadRequest


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TextPart(_Model):
    type: Literal["text"]
    text: str


class OpenAIMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str
    messages: Annotated[list[OpenAIMessage], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    session_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")] | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value):
        stops = [value] if isinstance(value, str) else value or []
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def parse_request(data: object) -> ChatCompletionRequest:
    """Raises BadRequest whose `param` names the offending field."""
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    _refuse_non_text_parts(data.get("messages"))
    for unsupported in ("tools", "functions", "logprobs", "response_format"):
        value = data.get(unsupported)
        if value not in (None, False, [], {"type": "text"}):
            raise _bad(f"{unsupported} is not supported by this server", unsupported)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("str", "list", "function")))
        if param == "n":
            raise _bad("only n=1 is supported", "n") from None
        raise _bad(f"{param or 'body'}: {err['msg']}", param or None) from None


def _refuse_non_text_parts(messages: object) -> None:
    """A content part other than text (image_url, input_audio, file, ...) is a 400 naming that part
    (`messages[i].content[j]`); any other malformed message is left to the schema."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                where = f"messages[{i}].content[{j}]"
                raise _bad(f"{where}: only text content parts are supported (got {kind[:40]})", where)


def _bad(message: str, param: str | None) -> BadRequest:
    return BadRequest(message, param=param)
