"""Session credentials: public ids and secret resume tokens (stored only as hashes)."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_session_id() -> str:
    return secrets.token_hex(16)


def new_resume_token() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def hash_token(token: str) -> str:
    # A fast hash suffices: the token is 256 random bits, not a password.
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), token_hash)
