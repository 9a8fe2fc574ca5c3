"""Limits that keep one client from taking the server: open WebSocket connections (in total and per
client address) and turns per minute per session. Event-loop only (no locks).

The client address is the peer's, or, when the peer is a configured trusted proxy, the last address in
X-Forwarded-For that is not itself a trusted proxy (so a client cannot pick its own address by sending
the header, and every user behind one proxy does not share one address's allowance)."""

from __future__ import annotations

import ipaddress
import time
from collections import deque

from aiohttp import web

from chatserver.errors import RateLimited

WINDOW_S = 60.0  # turns_per_minute counts turns started in the last WINDOW_S seconds


class ConnectionGate:
    """Counts open WebSocket connections. admit() refuses the handshake before the upgrade: HTTP 503 when
    the server is full, 429 when this client address already holds its share."""

    def __init__(self, max_total: int, max_per_client: int, trusted_proxies: tuple[str, ...] = ()):
        """trusted_proxies: addresses or networks (CIDR); a bad one raises ValueError."""
        self.max_total, self.max_per_client = max_total, max_per_client
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.total = 0
        self.by_client: dict[str, int] = {}

    def client_address(self, request: web.Request) -> str:
        peer = request.remote or ""
        if not self._is_trusted(peer):
            return peer
        forwarded = [a.strip() for h in request.headers.getall("X-Forwarded-For", []) for a in h.split(",")]
        for address in reversed(forwarded):
            if address and not self._is_trusted(address):
                return address
        return peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def admit(self, client: str) -> None:
        if self.total >= self.max_total:
            raise web.HTTPServiceUnavailable(text="too many open connections; retry later", headers={"Retry-After": "5"})
        if self.by_client.get(client, 0) >= self.max_per_client:
            raise web.HTTPTooManyRequests(text=f"at most {self.max_per_client} connections per client",
                                          headers={"Retry-After": "5"})
        self.total += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1

    def release(self, client: str) -> None:
        self.total -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]


class TurnRate:
    """At most `per_minute` turns per session in any WINDOW_S seconds (0: unlimited). Kept by session id,
    so reconnecting does not reset it; entries idle for a window are dropped."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self.num_refused = 0
        self.started: dict[str, deque[float]] = {}

    def check(self, session_id: str) -> None:
        """Count a turn of session_id now, or raise RateLimited (and count nothing)."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        self._forget_idle(now)
        times = self.started.setdefault(session_id, deque())
        while times and now - times[0] >= WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            self.num_refused += 1
            wait = WINDOW_S - (now - times[0])
            raise RateLimited(f"at most {self.per_minute} turns per minute in a session; retry in {wait:.0f} s",
                              retry_after=wait)
        times.append(now)

    def _forget_idle(self, now: float) -> None:
        if len(self.started) > 1024:
            for key in [k for k, t in self.started.items() if not t or now - t[-1] >= WINDOW_S]:
                del self.started[key]
