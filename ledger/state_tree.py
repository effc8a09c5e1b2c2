"""The state root: a bucketed, 16-ary Merkle tree over the whole state.

Structure (every hash domain-separated, see :mod:`ledger.hashing`):

* leaf    = ``len(key) || key || sha256(value)`` (1 + k + 32 bytes), ``key`` the
  logical key;
* bucket  = H(STATE_BUCKET, leaf_1 || ... || leaf_n), leaves in key order (the
  length prefix makes the concatenation unambiguous); there are 65,536 buckets,
  a key's bucket is :func:`ledger.state.bucket_of` (the empty bucket hashes the
  empty string, a constant);
* node    = H(STATE_NODE,   child_0 || ... || child_15): four 16-ary levels above
  the buckets (4,096, 256, 16 and 1 nodes); the top one is the state root.

Why 16-ary rather than binary: a block of 500 txs dirties ~1,000 buckets;
recomputing their binary paths costs ~12,000 Python-level hash calls, the
16-ary paths ~1,200 (each over 512 bytes, which is C-speed work). A proof
carries the whole bucket (typically a handful of leaves) and 4 x 15 siblings.

Why buckets: a block only re-hashes the buckets it touched (one prefix scan
each, since the stored key is ``bucket + logical key``) and their paths. Each
stored value starts with its own hash (see :mod:`ledger.state`), so re-hashing
a bucket hashes one concatenation, never the unchanged values in it.

Persistence: every changed node (buckets included) is written through
``CommitBundle.tree_writes`` under :func:`node_id`; ``StateReader.get_tree_node``
reads them back, a missing node is the empty one. :class:`StateTree` is the
in-memory copy a node keeps between blocks so that apply reads no tree node
from storage; :meth:`StateTree.load` rebuilds it from the stored bucket hashes,
recomputes the internal levels and checks them against the stored root.
"""

from __future__ import annotations

import hashlib

from ledger.codec import Record
from ledger.errors import CorruptionError
from ledger.hashing import H_STATE_BUCKET, H_STATE_NODE
from ledger.state import BUCKET_BYTES, VALUE_HASH_BYTES, StateView, bucket_of, strip_value
from storage.api import StateReader

ARITY = 16
DEPTH = 4  # levels of nodes above the buckets
BUCKETS = ARITY**DEPTH  # 65,536 = 2 ** (8 * BUCKET_BYTES)
HASH = 32
_TREE_PREFIX = b"n"

assert 256**BUCKET_BYTES == BUCKETS


_LEVEL_PREFIX = [_TREE_PREFIX + bytes((level,)) for level in range(DEPTH + 1)]
_sha256 = hashlib.sha256


def node_id(level: int, index: int) -> bytes:
    """Storage id of a tree node; level 0 is the root, level ``DEPTH`` the buckets."""
    return _LEVEL_PREFIX[level] + index.to_bytes(2, "big")


ROOT_ID = node_id(0, 0)


def leaf(key: bytes, value_hash: bytes) -> bytes:
    return bytes((len(key),)) + key + value_hash


def bucket_hash(leaves: list[bytes]) -> bytes:
    """Hash of a bucket from its leaves, already in key order."""
    return _sha256(H_STATE_BUCKET + b"".join(leaves)).digest()


def node_hash(children: bytes) -> bytes:
    """Same bytes as ``tagged_hash(H_STATE_NODE, children)``, one call cheaper."""
    return _sha256(H_STATE_NODE + children).digest()


def _empty_levels() -> list[bytes]:
    empty = [b""] * (DEPTH + 1)
    empty[DEPTH] = bucket_hash([])
    for level in range(DEPTH - 1, -1, -1):
        empty[level] = node_hash(empty[level + 1] * ARITY)
    return empty


EMPTY = _empty_levels()  # EMPTY[level]: hash of an empty node at that level
EMPTY_BUCKET = EMPTY[DEPTH]
EMPTY_ROOT = EMPTY[0]

TreeWrites = list[tuple[bytes, bytes]]


class StateTree:
    """All node hashes of one state root, in memory (~2.2 MB).

    Immutable from the outside: :meth:`update` returns a new tree, so the
    tree of the last committed height stays valid until the caller swaps it.
    """

    __slots__ = ("_levels",)

    def __init__(self, levels: list[bytearray]) -> None:
        self._levels = levels

    @classmethod
    def empty(cls) -> StateTree:
        return cls([bytearray(EMPTY[lvl] * ARITY**lvl) for lvl in range(DEPTH + 1)])

    @classmethod
    def load(cls, reader: StateReader) -> StateTree:
        """Rebuild from the stored bucket hashes; :class:`CorruptionError` if the root differs."""
        buckets = bytearray(EMPTY_BUCKET * BUCKETS)
        for index in range(BUCKETS):
            stored = reader.get_tree_node(node_id(DEPTH, index))
            if stored is not None:
                if len(stored) != HASH:
                    raise CorruptionError("state tree node of wrong size")
                buckets[index * HASH : (index + 1) * HASH] = stored
        levels = [bytearray() for _ in range(DEPTH)] + [buckets]
        for level in range(DEPTH - 1, -1, -1):
            below = levels[level + 1]
            width = ARITY * HASH
            levels[level] = bytearray(
                b"".join(
                    node_hash(bytes(below[i * width : (i + 1) * width]))
                    for i in range(ARITY**level)
                )
            )
        tree = cls(levels)
        stored_root = reader.get_tree_node(ROOT_ID)
        if (stored_root or EMPTY_ROOT) != tree.root:
            raise CorruptionError("state tree does not match its stored root")
        return tree

    @property
    def root(self) -> bytes:
        return bytes(self._levels[0][:HASH])

    def level(self, level: int) -> memoryview:
        """Read-only view of one level's hashes (``ARITY ** level`` x 32 bytes)."""
        return memoryview(self._levels[level]).toreadonly()

    def node(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH : (index + 1) * HASH])

    def update(self, new_buckets: dict[int, bytes]) -> tuple[StateTree, TreeWrites]:
        """New tree with the given bucket hashes, and the nodes that changed (sorted by id)."""
        levels = [bytearray(lv) for lv in self._levels]
        per_level: list[TreeWrites] = [[] for _ in range(DEPTH + 1)]
        changed = sorted(new_buckets)
        buckets = levels[DEPTH]
        prefix = _LEVEL_PREFIX[DEPTH]
        out = per_level[DEPTH]
        for index in changed:
            h = new_buckets[index]
            buckets[index * HASH : (index + 1) * HASH] = h
            out.append((prefix + index.to_bytes(2, "big"), h))
        width = ARITY * HASH
        sha = _sha256
        for level in range(DEPTH - 1, -1, -1):
            below = levels[level + 1]
            here = levels[level]
            prefix = _LEVEL_PREFIX[level]
            out = per_level[level]
            parents = sorted({i // ARITY for i in changed})
            for p in parents:
                h = sha(H_STATE_NODE + below[p * width : (p + 1) * width]).digest()
                here[p * HASH : (p + 1) * HASH] = h
                out.append((prefix + p.to_bytes(2, "big"), h))
            changed = parents
        # node ids sort by level, then index: this is already storage order
        return StateTree(levels), [w for lw in per_level for w in lw]


def update_from_reader(
    reader: StateReader, new_buckets: dict[int, bytes]
) -> tuple[TreeWrites, bytes]:
    """The same update as :meth:`StateTree.update`, reading siblings from storage.

    For callers without an in-memory tree (tests, tools); 16 node reads per
    changed node, so a node should keep a :class:`StateTree` instead.
    """
    writes: TreeWrites = []
    current: dict[int, bytes] = dict(new_buckets)
    for index in sorted(current):
        writes.append((node_id(DEPTH, index), current[index]))
    root = reader.get_tree_node(ROOT_ID) or EMPTY_ROOT
    for level in range(DEPTH - 1, -1, -1):
        parents: dict[int, bytes] = {}
        for p in sorted({i // ARITY for i in current}):
            children = b"".join(
                current[c] if c in current else _stored(reader, level + 1, c)
                for c in range(p * ARITY, (p + 1) * ARITY)
            )
            parents[p] = node_hash(children)
            writes.append((node_id(level, p), parents[p]))
        current = parents
        if level == 0 and 0 in parents:
            root = parents[0]
    return writes, root


def _stored(reader: StateReader, level: int, index: int) -> bytes:
    stored = reader.get_tree_node(node_id(level, index))
    if stored is None:
        return EMPTY[level]
    if len(stored) != HASH:
        raise CorruptionError("state tree node of wrong size")
    return stored


def dirty_bucket_hashes(view: StateView, tree: StateTree | None) -> dict[int, bytes]:
    """New hashes of every bucket the view wrote to.

    A bucket's committed entries come from one prefix scan, skipped when the
    in-memory tree shows the bucket empty; no value is re-hashed.
    """
    out: dict[int, bytes] = {}
    reader = view.reader
    vh = VALUE_HASH_BYTES
    buckets = None if tree is None else tree.level(DEPTH)
    for bucket, pending in view.pending().items():
        index = int.from_bytes(bucket, "big")
        if buckets is not None and buckets[index * HASH : (index + 1) * HASH] == EMPTY_BUCKET:
            entries = pending  # nothing committed in this bucket: no scan
        else:
            entries = {k[BUCKET_BYTES:]: v for k, v in reader.scan_state(bucket)}
            entries.update(pending)
        if len(entries) == 1:
            ((k, v),) = entries.items()
            out[index] = bucket_hash([] if v is None else [bytes((len(k),)) + k + v[:vh]])
            continue
        leaves = [
            bytes((len(k),)) + k + v[:vh] for k, v in sorted(entries.items()) if v is not None
        ]
        out[index] = bucket_hash(leaves)
    return out


# --- proofs ------------------------------------------------------------------------


class StateLeaf(Record, frozen=True):
    key: bytes
    value_hash: bytes


class StateProof(Record, frozen=True):
    """Proof that ``key`` has ``value`` (or, when ``value`` is None, is absent).

    ``leaves`` is the whole bucket of ``key`` in key order; ``siblings`` holds,
    from the bucket up, the 15 sibling hashes at each of the 4 levels
    (480 bytes each, in child order without the node on the path).
    """

    key: bytes
    value: bytes | None
    leaves: list[StateLeaf]
    siblings: list[bytes]


def prove(reader: StateReader, key: bytes) -> tuple[StateProof, bytes]:
    """A proof for ``key`` against the committed state, with that state's root."""
    bucket = bucket_of(key)
    index = int.from_bytes(bucket, "big")
    leaves = [
        StateLeaf(k[BUCKET_BYTES:], v[:VALUE_HASH_BYTES]) for k, v in reader.scan_state(bucket)
    ]
    siblings: list[bytes] = []
    for level in range(DEPTH, 0, -1):
        first = (index // ARITY) * ARITY
        siblings.append(
            b"".join(
                _stored(reader, level, c) for c in range(first, first + ARITY) if c != index
            )
        )
        index //= ARITY
    value = strip_value(reader.get_state(bucket + key), key)
    root = reader.get_tree_node(ROOT_ID) or EMPTY_ROOT
    return StateProof(key, value, leaves, siblings), root


def verify_state_proof(root: bytes, proof: StateProof) -> bool:
    """Pure check of a :class:`StateProof` against a state root."""
    if len(proof.siblings) != DEPTH or not proof.key or len(proof.key) > 255:
        return False
    found: bytes | None = None
    leaves: list[bytes] = []
    previous: bytes | None = None
    for item in proof.leaves:
        if previous is not None and not previous < item.key:
            return False
        if len(item.value_hash) != HASH or not item.key or len(item.key) > 255:
            return False
        previous = item.key
        if item.key == proof.key:
            found = item.value_hash
        leaves.append(leaf(item.key, item.value_hash))
    if proof.value is None:
        if found is not None:
            return False
    elif found != hashlib.sha256(proof.value).digest():
        return False
    h = bucket_hash(leaves)
    index = int.from_bytes(bucket_of(proof.key), "big")
    for siblings in proof.siblings:
        if len(siblings) != (ARITY - 1) * HASH:
            return False
        pos = (index % ARITY) * HASH
        h = node_hash(siblings[:pos] + h + siblings[pos:])
        index //= ARITY
    return h == root
