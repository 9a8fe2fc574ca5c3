"""Operating the server: health and readiness, Prometheus metrics, and the limits that keep one client
from taking it (connections per address, turns per minute)."""

from chatserver.ops.limits import ConnectionGate, TurnRate
from chatserver.ops.metrics import Metrics
from chatserver.ops.views import setup

__all__ = ["ConnectionGate", "Metrics", "TurnRate", "setup"]
