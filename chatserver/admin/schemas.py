"""Response bodies of the admin API; their JSON schemas make up the OpenAPI description."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class KVPlacement(BaseModel):
    tier: Literal["ram", "disk", "none"] = Field(description="where the session's KV cache is now")
    bytes: int = Field(ge=0, description="bytes it occupies in that tier (RAM: allocated capacity)")


class SessionSummary(BaseModel):
    id: str
    title: str | None
    model: str
    created_at: datetime
    updated_at: datetime
    num_messages: int = Field(ge=0)
    num_tokens: int = Field(ge=0, description="conversation length in tokens after its last turn")
    kv: KVPlacement


class AdminMessage(BaseModel):
    id: int
    parent_id: int | None = Field(description="the message this one follows; null for the first")
    role: Literal["system", "user", "assistant"]
    content: str
    finish_reason: str | None = None
    created_at: datetime


class SessionDetail(SessionSummary):
    messages: list[AdminMessage] = Field(description="the active path, oldest first; with ?tree=true every "
                                                     "message of every branch, oldest first")
    active_leaf_id: int | None = Field(description="the last message of the active path")
    connections: int = Field(ge=0, description="WebSocket connections open on this session")
    replica: str | None = Field(description="the replica of a cluster that answered (--replica-name); null "
                                            "for a single server")
    lease_owner: str | None = Field(description="in a cluster, the replica named by the session's lease in "
                                                "the database: the one serving it, or one that stopped without "
                                                "releasing it, until another takes the session; null when it "
                                                "was let go, and for a single server")


class SessionPage(BaseModel):
    sessions: list[SessionSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class EvictResult(BaseModel):
    id: str
    action: Literal["spilled", "dropped"]
    kv: KVPlacement


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
