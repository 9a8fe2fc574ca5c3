"""The admin REST API under /api (sessions, KV placement, statistics; bearer token) and its OpenAPI
description."""

from chatserver.admin.routes import setup

__all__ = ["setup"]
