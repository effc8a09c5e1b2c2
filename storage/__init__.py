"""Storage: LevelDB (plyvel) behind one key schema, with an in-memory twin.

Public surface: :class:`Store` and its constructors; the contract types live in
:mod:`storage.api`. Everything else is an implementation module.
"""

from storage.api import CommitBundle, StateReader
from storage.kv import KV, LevelDBKV, MemoryKV
from storage.scan import find_marker
from storage.store import Store, StoreStatistics, VerifyReport, open_leveldb, open_memory

__all__ = [
    "KV",
    "CommitBundle",
    "LevelDBKV",
    "MemoryKV",
    "StateReader",
    "Store",
    "StoreStatistics",
    "VerifyReport",
    "find_marker",
    "open_leveldb",
    "open_memory",
]
