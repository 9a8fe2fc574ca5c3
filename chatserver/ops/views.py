"""Operator endpoints: GET /healthz (alive), GET /readyz (ready to serve, or why not), GET /metrics."""

from __future__ import annotations

import asyncio

from aiohttp import web

from chatserver import keys
from storage import RedisUnavailable

STALL_SECONDS = 30.0  # an engine loop silent for this long while turns wait is not ready


async def healthz(request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: model loaded, database reachable, engine loop making progress (else 503). "degraded" (still
    200: turns are served, KV that cannot be spilled is recomputed later): the KV directory refuses writes,
    or the shared KV tier (Redis) does not answer."""
    checks = {}
    engine = request.app.get(keys.engine)
    checks["model"] = engine is not None
    try:
        await request.app[keys.transcripts].ping()
        checks["database"] = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        checks["database"] = False
    checks["engine"] = engine is not None and engine.is_alive(STALL_SECONDS)
    ready = all(checks.values())
    body: dict = {"checks": checks}
    disk = request.app.get(keys.kv_files)
    if disk is not None:
        checks["kv_disk"] = await asyncio.to_thread(disk.check_writable)
        if not checks["kv_disk"]:
            body["kv_disk_error"] = disk.write_error
    shared = getattr(disk, "shared", None)  # a cluster's shared KV tier (--redis-url)
    if shared is not None:
        checks["kv_shared"] = await asyncio.to_thread(shared.ping)
        if not checks["kv_shared"]:
            body["kv_shared_error"] = shared.stats.last_error
    degraded = not (checks.get("kv_disk", True) and checks.get("kv_shared", True))
    body["status"] = ("degraded" if degraded else "ready") if ready else "not_ready"
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    snapshot = await request.app[keys.engine].stats(with_buckets=True)
    snapshot["server"] = {"websockets": len(request.app[keys.websockets]),
                          "rate_limited": request.app[keys.chat].turn_rate.num_refused}
    shared = getattr(request.app.get(keys.kv_files), "shared", None)
    if shared is not None:  # Redis's own figures: memory, its bound, hits, evictions
        try:
            snapshot["redis"] = await asyncio.to_thread(shared.info)
        except RedisUnavailable:
            snapshot["redis"] = None
    return web.Response(body=request.app[keys.metrics].render(snapshot),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
