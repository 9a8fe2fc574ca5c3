"""OpenAPI 3.1 description of the admin API, built from the pydantic response models."""

from __future__ import annotations

from functools import cache

from pydantic.json_schema import models_json_schema

from chatserver.admin.schemas import ErrorResponse, EvictResult, SessionDetail, SessionPage

_ID = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict:
    descriptions = {400: "bad request", 401: "missing or wrong bearer token", 403: "admin API disabled",
                    404: "no such session"}
    return {str(s): {"description": descriptions[s], "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
            for s in statuses}


def _ok(name: str, description: str) -> dict:
    return {"200": {"description": description, "content": {"application/json": {"schema": _ref(name)}}}}


@cache
def openapi_document() -> dict:
    _, schemas = models_json_schema(
        [(m, "serialization") for m in (SessionPage, SessionDetail, EvictResult, ErrorResponse)],
        ref_template="#/components/schemas/{model}",
    )
    auth = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatserver admin API", "version": "1",
                 "description": "Operators list, inspect, evict and delete chat sessions and read statistics."},
        "components": {"schemas": schemas["$defs"],
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": auth,
        "paths": {
            "/api/sessions": {"get": {
                "summary": "List sessions, most recently updated first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "tier", "in": "query", "schema": {"type": "string", "enum": ["ram", "disk", "none"]}},
                ],
                "responses": {**_ok("SessionPage", "a page of sessions"), **_errors(400, 401, 403)},
            }},
            "/api/sessions/{session_id}": {
                "get": {"summary": "One session with its transcript", "parameters": [_ID],
                        "responses": {**_ok("SessionDetail", "the session"), **_errors(401, 403, 404)}},
                "delete": {"summary": "Delete the transcript and the KV in every tier; connected clients are told and disconnected",
                           "parameters": [_ID],
                           "responses": {"204": {"description": "deleted"}, **_errors(401, 403, 404)}},
            },
            "/api/sessions/{session_id}/evict": {"post": {
                "summary": "Move the session's KV from RAM to disk (drop=true: discard it everywhere)",
                "parameters": [_ID, {"name": "drop", "in": "query", "schema": {"type": "boolean", "default": False}}],
                "responses": {**_ok("EvictResult", "where the KV is now"), **_errors(400, 401, 403, 404)},
            }},
            "/api/stats": {"get": {
                "summary": "KV store and batching statistics",
                "responses": {"200": {"description": "statistics", "content": {"application/json": {"schema": {"type": "object"}}}},
                              **_errors(401, 403)},
            }},
        },
    }
