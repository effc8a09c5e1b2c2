"""Every LevelDB key of a medledger node, defined in this one module.

A key is a one-byte namespace prefix followed by the namespace's own key.
Heights are fixed-width (8 bytes) big-endian so that LevelDB's bytewise order
is height order: iterating a height namespace walks the chain from its base
upward, and a range ``[key(a), key(b))`` is exactly the heights ``a..b-1``.

Prefixes are part of the on-disk format: changing or reusing one needs a new
:data:`SCHEMA_VERSION` (a store with another version refuses to open). Nothing
outside this module builds or parses a key by hand.

Values are not defined here; every stored value is framed with a checksum by
:mod:`storage.checksum`.
"""

from __future__ import annotations

import enum
import struct

SCHEMA_VERSION = 1

HEIGHT_SIZE = 8
INDEX_SIZE = 4
MAX_HEIGHT = (1 << 64) - 1
MAX_INDEX = (1 << 32) - 1

_HEIGHT = struct.Struct(">Q")
_LOCATION = struct.Struct(">QI")


class Namespace(bytes, enum.Enum):
    """One-byte key prefixes. The member name is what errors and ``verify`` report."""

    BLOCK = b"B"  # height -> canonical block bytes
    BLOCK_HASH = b"b"  # height -> block hash
    HEIGHT_BY_HASH = b"H"  # block hash -> height
    CERTIFICATE = b"C"  # height -> commit certificate bytes
    RESULTS = b"R"  # height -> per-tx results bytes
    STATE_ROOT = b"r"  # height -> state root after that height
    TX_LOCATION = b"T"  # tx hash -> (height, index)
    STATE = b"S"  # ledger state key (verbatim) -> value
    TREE = b"N"  # state-tree node id (verbatim) -> node bytes
    BLOB = b"O"  # blob hash -> blob bytes (deleted, never tombstoned, on erasure)
    META = b"M"  # node-local metadata name (ascii) -> value
    WAL = b"W"  # reserved: consensus WAL index, sequence number -> entry
    #: Node-local, never part of the state root or sent to peers: sequence
    #: number (8 bytes, detection order) -> equivocation evidence (node.evidence).
    EVIDENCE = b"E"

    @property
    def label(self) -> str:
        return self.name.lower()


_BY_PREFIX: dict[int, Namespace] = {ns.value[0]: ns for ns in Namespace}

# Namespaces whose key is exactly a height.
HEIGHT_NAMESPACES = (
    Namespace.BLOCK,
    Namespace.BLOCK_HASH,
    Namespace.CERTIFICATE,
    Namespace.RESULTS,
    Namespace.STATE_ROOT,
)


class Meta(enum.StrEnum):
    """Names in the META namespace. Reserved ones are written only by ``Store.commit``."""

    SCHEMA_VERSION = "schema_version"  # 8-byte big-endian int
    BASE_HEIGHT = "base_height"  # first height this store holds
    LAST_HEIGHT = "last_height"  # last committed height
    LAST_BLOCK_HASH = "last_block_hash"
    STATE_ROOT = "state_root"  # state root after LAST_HEIGHT
    STABLE_CHECKPOINT = "stable_checkpoint"  # consensus: last stable checkpoint height


# Meta names (plain strings) that only ``Store`` itself writes (put_meta refuses them).
RESERVED_META: frozenset[str] = frozenset(
    m.value
    for m in (
        Meta.SCHEMA_VERSION,
        Meta.BASE_HEIGHT,
        Meta.LAST_HEIGHT,
        Meta.LAST_BLOCK_HASH,
        Meta.STATE_ROOT,
    )
)


def namespace_of(key: bytes) -> Namespace | None:
    """The namespace a raw key belongs to, or None for a key no schema defines."""
    if not key:
        return None
    return _BY_PREFIX.get(key[0])


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def encode_height(height: int) -> bytes:
    if not 0 <= height <= MAX_HEIGHT:
        raise ValueError(f"height {height} out of range")
    return _HEIGHT.pack(height)


def decode_height(raw: bytes) -> int:
    (height,) = _HEIGHT.unpack(raw)
    return int(height)


def height_key(ns: Namespace, height: int) -> bytes:
    """Key of ``height`` in one of :data:`HEIGHT_NAMESPACES`."""
    return ns.value + encode_height(height)


def height_of_key(key: bytes) -> int:
    """Inverse of :func:`height_key` (the caller checks the length first)."""
    return decode_height(key[1:])


def block_key(height: int) -> bytes:
    return height_key(Namespace.BLOCK, height)


def block_hash_key(height: int) -> bytes:
    return height_key(Namespace.BLOCK_HASH, height)


def certificate_key(height: int) -> bytes:
    return height_key(Namespace.CERTIFICATE, height)


def results_key(height: int) -> bytes:
    return height_key(Namespace.RESULTS, height)


def state_root_key(height: int) -> bytes:
    return height_key(Namespace.STATE_ROOT, height)


def height_by_hash_key(block_hash: bytes) -> bytes:
    return Namespace.HEIGHT_BY_HASH.value + block_hash


def tx_location_key(tx_hash: bytes) -> bytes:
    return Namespace.TX_LOCATION.value + tx_hash


def encode_location(height: int, index: int) -> bytes:
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"tx index {index} out of range")
    return _LOCATION.pack(height, index)


def decode_location(raw: bytes) -> tuple[int, int]:
    height, index = _LOCATION.unpack(raw)
    return int(height), int(index)


LOCATION_SIZE = _LOCATION.size


def state_key(key: bytes) -> bytes:
    return Namespace.STATE.value + key


def tree_key(node_id: bytes) -> bytes:
    return Namespace.TREE.value + node_id


def blob_key(blob_hash: bytes) -> bytes:
    return Namespace.BLOB.value + blob_hash


def meta_key(name: str) -> bytes:
    return Namespace.META.value + name.encode("ascii")


def wal_key(seq: int) -> bytes:
    """Reserved for the consensus WAL index: entries in sequence order."""
    return Namespace.WAL.value + encode_height(seq)


def evidence_key(seq: int) -> bytes:
    """Node-local equivocation evidence, numbered in the order this node detected it."""
    return Namespace.EVIDENCE.value + encode_height(seq)


def namespace_range(ns: Namespace) -> tuple[bytes, bytes | None]:
    """``[start, stop)`` covering every key of ``ns``."""
    return ns.value, prefix_end(ns.value)
