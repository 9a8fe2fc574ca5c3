"""Per-session KV: buffers (with prefixes shared copy-free between sessions and between a conversation's
branches), the RAM store that spills to a disk tier and restores from it, prefix sharing across sessions,
branches of one conversation, the radix prefix index."""

from engine.kv.branches import Branches, branch_key
from engine.kv.config import KV_DTYPES, KVStoreConfig, KVStoreStats
from engine.kv.disk_tier import DiskTier, KVSpec
from engine.kv.prefix_index import PrefixIndex
from engine.kv.session_kv import SessionKV, SharedPrefix, common_prefix_length
from engine.kv.sharing import PrefixSharing
from engine.kv.store import KVStore

__all__ = ["KV_DTYPES", "Branches", "DiskTier", "KVSpec", "KVStore", "KVStoreConfig", "KVStoreStats", "PrefixIndex",
           "PrefixSharing", "SessionKV", "SharedPrefix", "branch_key",
           "common_prefix_length"]
