"""GET /metrics: Prometheus text format from one engine statistics snapshot per scrape.

Names are prefixed `chatserver_`; no label carries a session id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily




class SnapshotCollector:
    """Turns an Engine.stats_snapshot() (plus server counts) into metric families."""

    def __init__(self):
        self.snapshot: dict = {}

    def collect(self):
        s = self.snapshot
        if not s:
            return
        e, kv, server = s["engine"], s["kv"], s["server"]
        yield GaugeMetricFamily("chatserver_websocket_connections", "Open WebSocket connections", value=server["websockets"])
        yield GaugeMetricFamily("chatserver_queue_depth", "Turns waiting to start", value=e["queue_depth"])
        yield GaugeMetricFamily("chatserver_running_turns", "Turns prefilling or decoding", value=e["running"])
        yield _labelled(CounterMetricFamily, "chatserver_turns", "Turns finished, by outcome", "outcome", e["turns_finished"])
        yield _labelled(CounterMetricFamily, "chatserver_turns_refused", "Turns refused before they started, by reason",
                        "reason", {**e["refused"], "rate_limited": server["rate_limited"]})
        yield GaugeMetricFamily("chatserver_predicted_ttft_seconds", "Predicted wait for a new turn's first token",
                                value=e["predicted_ttft_ms"] / 1000)
        yield _labelled(CounterMetricFamily, "chatserver_tokens", "Tokens by kind", "kind",
                        {"prompt": e["prompt_tokens"], "cached": e["cached_tokens"], "generated": e["generated_tokens"]})
        yield _labelled(GaugeMetricFamily, "chatserver_kv_bytes", "KV cache bytes per tier", "tier",
                        {"ram": kv["ram"]["bytes"], "disk": kv["disk"]["bytes"]})
        yield _labelled(GaugeMetricFamily, "chatserver_kv_sessions", "Sessions with KV per tier", "tier",
                        {"ram": kv["ram"]["sessions"], "disk": kv["disk"]["sessions"]})
        yield _labelled(CounterMetricFamily, "chatserver_kv_lookups", "KV cache lookups by result", "result",
                        {"ram": kv["hits_ram"], "disk": kv["hits_disk"], "shared": kv["hits_shared"],
                         "miss": kv["misses"]})
        yield CounterMetricFamily("chatserver_kv_spills", "Sessions written to disk", value=kv["spills"])
        yield CounterMetricFamily("chatserver_kv_restores", "Sessions read back from disk", value=kv["restores"])
        yield CounterMetricFamily("chatserver_kv_recomputes", "Unusable KV files (recomputed instead)", value=kv["recomputes"])
        yield _labelled(CounterMetricFamily, "chatserver_kv_evictions", "RAM evictions by cause", "cause", kv["evictions"])
        files = kv.get("files") or {}
        yield _labelled(CounterMetricFamily, "chatserver_kv_disk_bytes", "Bytes of KV files by direction", "direction",
                        {"written": files.get("bytes_written", 0), "read": files.get("bytes_read", 0)})
        yield from _shared_tier(kv.get("shared_tier"), s.get("redis", False))
        yield _histogram("chatserver_decode_batch_size", "Sequences decoding per forward pass", e["decode_batch"])
        yield _histogram("chatserver_prefill_batch_size", "Sequences prefilling per forward pass", e["prefill_batch"])
        yield _histogram("chatserver_step_tokens", "Tokens per forward pass", e["step_tokens"])
        yield _histogram("chatserver_queue_wait_seconds", "Turn submitted to first scheduled", e["queue_wait_ms"], 1e-3)
        yield _histogram("chatserver_ttft_seconds", "Time to first token", e["ttft_ms"], 1e-3)
        yield _histogram("chatserver_inter_token_latency_seconds", "Gap between tokens of a turn", e["itl_ms"], 1e-3)


def _labelled(family, name: str, doc: str, label: str, values: dict):
    metric = family(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric


def _shared_tier(shared: dict | None, redis: dict | None | bool):
    """A cluster's shared KV tier: our counters, and Redis's own figures (None: Redis did not answer)."""
    if shared is None:
        return
    yield GaugeMetricFamily("chatserver_kv_shared_up", "1 if the shared KV tier (Redis) answers",
                            value=0 if shared["is_down"] or redis is None else 1)
    yield _labelled(CounterMetricFamily, "chatserver_kv_shared_chunks", "Shared-tier chunks by event", "event",
                    {"written": shared["chunks_written"], "reused": shared["chunks_reused"],
                     "missing": shared["chunk_misses"]})
    yield _labelled(CounterMetricFamily, "chatserver_kv_shared_lookups", "Shared-tier session lookups", "result",
                    {"hit": shared["head_hits"], "miss": shared["head_misses"]})
    yield _labelled(CounterMetricFamily, "chatserver_kv_shared_bytes", "Shared-tier bytes by direction", "direction",
                    {"written": shared["bytes_written"], "read": shared["bytes_read"]})
    yield CounterMetricFamily("chatserver_kv_shared_errors", "Shared-tier calls Redis did not answer",
                              value=shared["num_errors"])
    if redis:
        yield _labelled(GaugeMetricFamily, "chatserver_redis_memory_bytes", "Redis memory", "kind",
                        {"used": redis["used_bytes"], "max": redis["max_bytes"]})
        yield _labelled(CounterMetricFamily, "chatserver_redis_keyspace", "Redis key lookups", "result",
                        {"hit": redis["keyspace_hits"], "miss": redis["keyspace_misses"]})
        yield CounterMetricFamily("chatserver_redis_evicted_keys", "Keys Redis evicted to stay in its bound",
                                  value=redis["evicted_keys"])


def _histogram(name: str, doc: str, dist: dict, scale: float = 1.0):
    buckets = [("+Inf" if bound == float("inf") else repr(bound * scale), count) for bound, count in dist["buckets"]]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=dist["sum"] * scale)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)

    def render(self, snapshot: dict) -> bytes:
        self.collector.snapshot = snapshot
        return generate_latest(self.registry)
