"""Bearer tokens of the admin API and the OpenAI API (constant-time comparison)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: str, expected: str) -> bool:
    """An `Authorization: Bearer <token>` header value carries `expected` (constant-time compare)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())
