"""JSON text from clients (WebSocket frames, HTTP request bodies) parsed in one way by every transport."""

from __future__ import annotations

import json

from chatserver.errors import BadRequest

__all__ = ["parse_json"]


def parse_json(text: str | bytes, what: str) -> object:
    """The value of `text` (str, or bytes in UTF-8/16/32 as RFC 8259 allows).

    Raises BadRequest, with a message starting with `what` ("frame", "the body"), for anything that is
    not JSON: a syntax error, bytes that are not text, and nesting deeper than the parser's recursion
    limit (about 1000 levels less the stack in use; `"[" * 100000` is 100 KB).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not valid JSON: not UTF-8 text") from None
    except RecursionError:
        raise BadRequest(f"{what} is not valid JSON: nested too deeply") from None
