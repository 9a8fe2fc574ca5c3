"""Per-session KV: buffers (with prefixes shared copy-free between sessions), the RAM store that spills
to a disk tier and restores from it, prefix sharing across sessions, the radix prefix index."""

from engine.kv.config import KV_DTYPES, KVStoreConfig, KVStoreStats
from engine.kv.disk_tier import DiskTier, KVSpec
from engine.kv.prefix_index import PrefixIndex
from engine.kv.session_kv import SessionKV, SharedPrefix, common_prefix_length
from engine.kv.sharing import PrefixSharing
from engine.kv.store import KVStore

__all__ = ["KV_DTYPES", "DiskTier", "KVSpec", "KVStore", "KVStoreConfig", "KVStoreStats", "PrefixIndex",
           "PrefixSharing", "SessionKV", "SharedPrefix", "common_prefix_length"]
