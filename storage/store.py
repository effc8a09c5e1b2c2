"""The node's store: one atomic batch per committed height (or run of heights), checksummed reads.

:class:`Store` is the only owner of the on-disk state of a node. It knows no
ledger or consensus types: blocks, certificates and results are canonical
bytes, state keys are the ledger's own. What it guarantees:

- ``commit(bundle)`` writes everything a height changes in ONE write batch
  (LevelDB ``sync=True``), after validating the bundle; if validation fails
  nothing is written. After a crash the store holds every height up to some
  ``h`` in full and nothing of ``h + 1``. ``begin_run()`` does the same for
  several consecutive heights at once (:class:`CommitRun`: one batch, one
  fsync); a crash then leaves the store at the end of some run.
- Every value read is checked against its checksum; corruption raises
  :class:`ledger.errors.CorruptionError` and is never returned as data.
- Erased blobs are deleted, not tombstoned; :meth:`Store.compact_blobs` makes
  LevelDB drop the old copies from its files too (crypto-shredding).

The first commit may be at any height (genesis at 0, or a later base after
state transfer); each later one must be the next height.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

from ledger.errors import CorruptionError, InvalidBundleError, StoreVersionError
from ledger.hashing import HASH_SIZE
from storage import schema
from storage.api import CommitBundle
from storage.checksum import describe_key, seal, unseal
from storage.kv import KV, LevelDBKV, MemoryKV, Op
from storage.schema import Meta, Namespace


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    """Counters since the store was opened; maps one-to-one onto metrics."""

    commits: int
    write_batches: int  # commits plus put_blobs / delete_blobs / put_meta batches
    keys_written: int
    keys_deleted: int
    bytes_written: int  # keys plus framed values
    last_batch_seconds: float  # wall time of the last write batch (metrics only)
    last_height: int | None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a full :meth:`Store.verify` scan checked."""

    keys: int
    bytes: int
    base_height: int | None
    last_height: int | None
    per_namespace: tuple[tuple[str, int], ...]  # (namespace label, key count), schema order


class Store:
    """Facade over a :class:`~storage.kv.KV`; satisfies :class:`storage.api.StateReader`.

    One writer at a time (the node's commit task); reads may come from any
    thread while LevelDB is the backend.
    """

    def __init__(self, kv: KV, *, sync: bool = True) -> None:
        self._kv = kv
        self._sync = sync
        self._commits = 0
        self._batches = 0
        self._keys_written = 0
        self._keys_deleted = 0
        self._bytes_written = 0
        self._last_batch_seconds = 0.0
        self._check_schema_version()
        self._base_height = self._get_height_meta(Meta.BASE_HEIGHT)
        self._last_height = self._get_height_meta(Meta.LAST_HEIGHT)
        self._state_root = self.get_meta(Meta.STATE_ROOT)
        if (self._base_height is None) != (self._last_height is None):
            raise CorruptionError("metadata has only one of base_height and last_height")

    # --- lifetime ----------------------------------------------------------------

    @property
    def kv(self) -> KV:
        """The raw backend (tests flip bytes through it; nothing else should write)."""
        return self._kv

    def close(self) -> None:
        self._kv.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_schema_version(self) -> None:
        raw = self.get_meta(Meta.SCHEMA_VERSION)
        if raw is None:
            if next(self._kv.iterate(b"", None), None) is not None:
                raise StoreVersionError("store has data but no schema version")
            sealed = _Sealer()
            sealed.put(
                schema.meta_key(Meta.SCHEMA_VERSION), schema.encode_height(schema.SCHEMA_VERSION)
            )
            self._write(sealed)
            return
        if len(raw) != schema.HEIGHT_SIZE:
            raise CorruptionError("schema version has the wrong size")
        version = schema.decode_height(raw)
        if version != schema.SCHEMA_VERSION:
            raise StoreVersionError(
                f"store schema version {version}, this node reads {schema.SCHEMA_VERSION}"
            )

    def _get_height_meta(self, name: Meta) -> int | None:
        raw = self.get_meta(name)
        if raw is None:
            return None
        if len(raw) != schema.HEIGHT_SIZE:
            raise CorruptionError(f"metadata {name.value} has the wrong size")
        return schema.decode_height(raw)

    # --- writing -----------------------------------------------------------------

    def commit(self, bundle: CommitBundle) -> None:
        """Write everything of ``bundle.height`` in one durable batch.

        Raises :class:`InvalidBundleError` (nothing written) when the height
        is not the next one or a field is malformed, and
        :class:`~ledger.errors.StorageIOError` / ``StorageFullError`` when the
        disk refuses the batch: nothing of the height is stored, every earlier
        height stays whole, and the caller must stop. (A run of one height:
        see :meth:`begin_run`.)
        """
        run = self.begin_run()
        run.add(bundle)
        run.write()

    def begin_run(self) -> CommitRun:
        """Start committing consecutive heights together: one atomic, synced batch for all.

        The run is also a :class:`storage.api.StateReader` of the state after
        its last added height, so each height can be applied on top of the
        ones before it; nothing is visible to the store's own readers (or on
        disk) until :meth:`CommitRun.write`. One run at a time, by the single
        writer.
        """
        return CommitRun(self)

    def _bundle_ops(self, bundle: CommitBundle, first: bool) -> list[tuple[bytes, bytes | None]]:
        """Every (stored key, payload or None for a delete) that ``bundle`` writes.

        The per-item checks run while the list is built (one pass: this is the
        hot path of a node); ``first``: the store holds no height yet.
        """
        h = bundle.height
        ops: list[tuple[bytes, bytes | None]] = []
        put = ops.append
        try:
            put((schema.block_key(h), bundle.block_bytes))
            put((schema.block_hash_key(h), bundle.block_hash))
            put((schema.height_by_hash_key(bundle.block_hash), schema.encode_height(h)))
            put((schema.certificate_key(h), bundle.certificate))
            put((schema.results_key(h), bundle.results))
            put((schema.state_root_key(h), bundle.state_root))
            location = schema.encode_location
            for index, tx_hash in enumerate(bundle.tx_hashes):
                if len(tx_hash) != HASH_SIZE:
                    raise InvalidBundleError(f"tx hash {index} is not {HASH_SIZE} bytes")
                put((_TX + tx_hash, location(h, index)))
            for key, value in bundle.state_writes:
                _check_bytes(value, allow_none=True)
                put((_STATE + key, value))
            for node_id, node in bundle.tree_writes:
                _check_bytes(node, allow_none=False)
                put((_TREE + node_id, node))
            for blob_hash, blob in bundle.blob_puts:
                if len(blob_hash) != HASH_SIZE:
                    raise InvalidBundleError(f"blob hash is not {HASH_SIZE} bytes")
                _check_bytes(blob, allow_none=False)
                put((_BLOB + blob_hash, blob))
            for blob_hash in bundle.blob_deletes:
                if len(blob_hash) != HASH_SIZE:
                    raise InvalidBundleError(f"erased blob hash is not {HASH_SIZE} bytes")
                put((_BLOB + blob_hash, None))
        except (TypeError, ValueError) as exc:
            # A field of the wrong type or shape (str instead of bytes, a
            # triple instead of a pair, a None tree node ...).
            raise InvalidBundleError(f"malformed bundle field: {exc}") from None
        if first:
            put((schema.meta_key(Meta.BASE_HEIGHT), schema.encode_height(h)))
        put((schema.meta_key(Meta.LAST_HEIGHT), schema.encode_height(h)))
        put((schema.meta_key(Meta.LAST_BLOCK_HASH), bundle.block_hash))
        put((schema.meta_key(Meta.STATE_ROOT), bundle.state_root))
        # Every key of one bundle is distinct across all its parts (a state key
        # written twice, a blob stored and erased, a tx listed twice ...).
        if len({key for key, _ in ops}) != len(ops):
            raise InvalidBundleError("a key is written twice in one bundle")
        return ops

    def _validate_header(self, b: CommitBundle, last: int | None, pending: set[bytes]) -> None:
        """``b`` must follow height ``last``; ``pending``: block hashes of the run so far."""
        h = b.height
        if type(h) is not int or not 0 <= h <= schema.MAX_HEIGHT:
            raise InvalidBundleError(f"height {h!r} is not a valid height")
        if last is not None and h != last + 1:
            raise InvalidBundleError(f"height {h} does not follow last height {last}")
        _check_hash("block_hash", b.block_hash)
        for name in ("block_bytes", "certificate", "results", "state_root"):
            if not isinstance(getattr(b, name), bytes):
                raise InvalidBundleError(f"{name} is not bytes")
        if b.block_hash in pending or self._kv.get(schema.height_by_hash_key(b.block_hash)):
            raise InvalidBundleError(f"block {b.block_hash[:8].hex()} is already stored")
        if len(b.tx_hashes) > schema.MAX_INDEX + 1:
            raise InvalidBundleError("too many transactions")

    def _written_run(self, heights: int, last: int, state_root: bytes) -> None:
        """Book-keeping once a run's batch is durable."""
        self._commits += heights
        if self._base_height is None:
            self._base_height = last - heights + 1
        self._last_height = last
        self._state_root = state_root

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None:
        """Store blobs that arrive ahead of their commit (pending txs), in one batch.

        The caller has verified each blob against its hash (``ledger.blob``).
        """
        sealed = _Sealer()
        for blob_hash, blob in blobs:
            _check_hash("blob hash", blob_hash)
            if not isinstance(blob, bytes):
                raise InvalidBundleError("blob is not bytes")
            sealed.put(schema.blob_key(blob_hash), blob)
        if sealed.ops:
            self._write(sealed)

    def delete_blobs(self, blob_hashes: Iterable[bytes]) -> None:
        """Drop blobs outside a commit (a pending tx that will never commit)."""
        sealed = _Sealer()
        for blob_hash in blob_hashes:
            _check_hash("blob hash", blob_hash)
            sealed.delete(schema.blob_key(blob_hash))
        if sealed.ops:
            self._write(sealed)

    def put_meta(self, name: str, value: bytes) -> None:
        """Durably set node-local metadata (e.g. ``Meta.STABLE_CHECKPOINT``)."""
        if str(name) in schema.RESERVED_META:
            raise ValueError(f"metadata {name!s} is written only by commit")
        if not isinstance(value, bytes):
            raise TypeError("metadata value must be bytes")
        sealed = _Sealer()
        sealed.put(schema.meta_key(_meta_name(name)), value)
        self._write(sealed)

    def write_evidence(self, puts: Iterable[tuple[int, bytes]], deletes: Iterable[int]) -> None:
        """Add and drop node-local evidence entries (by sequence number) in one batch.

        Evidence is this node's own record (``node.evidence``): not part of a
        commit, of the state root or of state transfer.
        """
        sealed = _Sealer()
        for seq in deletes:
            sealed.delete(schema.evidence_key(seq))
        for seq, value in puts:
            if not isinstance(value, bytes):
                raise TypeError("evidence value must be bytes")
            sealed.put(schema.evidence_key(seq), value)
        if sealed.ops:
            self._write(sealed)

    def compact_blobs(self) -> None:
        """Make LevelDB rewrite the blob namespace, dropping erased blobs from its files.

        A LevelDB delete only hides a value until compaction; the node calls
        this after committing an erasure so the ciphertext leaves the disk.
        """
        start, stop = schema.namespace_range(Namespace.BLOB)
        self._kv.compact(start, stop)

    def _write(self, sealed: _Sealer) -> None:
        started = time.perf_counter()
        self._kv.write(sealed.ops, sync=self._sync)
        self._last_batch_seconds = time.perf_counter() - started
        self._batches += 1
        self._keys_written += len(sealed.ops) - sealed.deletes
        self._keys_deleted += sealed.deletes
        self._bytes_written += sealed.size

    # --- reading -----------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        raw = self._kv.get(key)
        return None if raw is None else unseal(key, raw)

    def _iterate(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        for key, raw in self._kv.iterate(start, stop):
            yield key, unseal(key, raw)

    def latest_height(self) -> int | None:
        """The last committed height, or None for an empty store."""
        return self._last_height

    def base_height(self) -> int | None:
        """The first height this store holds (None for an empty store)."""
        return self._base_height

    def state_root(self) -> bytes | None:
        """State root after :meth:`latest_height` (None for an empty store)."""
        return self._state_root

    def get_block_bytes(self, height: int) -> bytes | None:
        return self._get_at(Namespace.BLOCK, height)

    def get_block_hash(self, height: int) -> bytes | None:
        return self._get_at(Namespace.BLOCK_HASH, height)

    def get_certificate(self, height: int) -> bytes | None:
        return self._get_at(Namespace.CERTIFICATE, height)

    def get_results(self, height: int) -> bytes | None:
        return self._get_at(Namespace.RESULTS, height)

    def state_root_at(self, height: int) -> bytes | None:
        """State root after ``height``: block headers carry it ``window`` heights later."""
        return self._get_at(Namespace.STATE_ROOT, height)

    def _get_at(self, ns: Namespace, height: int) -> bytes | None:
        if not 0 <= height <= schema.MAX_HEIGHT:
            return None
        return self._get(schema.height_key(ns, height))

    def iter_blocks(self, start: int, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(height, block bytes) for ``start <= height < stop``, in height order."""
        return self._iter_numbered(Namespace.BLOCK, start, stop)

    def _iter_numbered(
        self, ns: Namespace, start: int, stop: int | None
    ) -> Iterator[tuple[int, bytes]]:
        """(n, value) of the keys ``ns || n`` (8-byte n) with ``start <= n < stop``, in order."""
        lo = schema.height_key(ns, max(start, 0))
        hi = schema.prefix_end(ns.value)
        if stop is not None and stop <= schema.MAX_HEIGHT:
            hi = schema.height_key(ns, max(stop, 0))
        for key, value in self._iterate(lo, hi):
            yield schema.height_of_key(key), value

    def height_of(self, block_hash: bytes) -> int | None:
        key = schema.height_by_hash_key(block_hash)
        raw = self._get(key)
        if raw is None:
            return None
        if len(raw) != schema.HEIGHT_SIZE:
            raise CorruptionError(f"bad height at {describe_key(key)}")
        return schema.decode_height(raw)

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        """(height, index in block) of a committed tx, or None."""
        key = schema.tx_location_key(tx_hash)
        raw = self._get(key)
        if raw is None:
            return None
        if len(raw) != schema.LOCATION_SIZE:
            raise CorruptionError(f"bad tx location at {describe_key(key)}")
        return schema.decode_location(raw)

    def get_blob(self, blob_hash: bytes) -> bytes | None:
        return self._get(schema.blob_key(blob_hash))

    def has_blob(self, blob_hash: bytes) -> bool:
        return self._kv.get(schema.blob_key(blob_hash)) is not None

    def get_state(self, key: bytes) -> bytes | None:
        return self._get(schema.state_key(key))

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every committed (key, value) whose key starts with ``prefix``, in key order."""
        start = schema.state_key(prefix)
        for key, value in self._iterate(start, schema.prefix_end(start)):
            yield key[1:], value

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        return self._get(schema.tree_key(node_id))

    def iter_evidence(self, start: int, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(sequence number, value) of the evidence entries ``start <= seq < stop``, in order."""
        return self._iter_numbered(Namespace.EVIDENCE, start, stop)

    def get_meta(self, name: str) -> bytes | None:
        return self._get(schema.meta_key(_meta_name(name)))

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            commits=self._commits,
            write_batches=self._batches,
            keys_written=self._keys_written,
            keys_deleted=self._keys_deleted,
            bytes_written=self._bytes_written,
            last_batch_seconds=self._last_batch_seconds,
            last_height=self._last_height,
        )

    # --- whole-store check -------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Read every key and value; raise :class:`CorruptionError` at the first problem.

        Checks every checksum, that every key belongs to the schema and has its
        namespace's shape, and that the heights form one whole chain: each
        height from base to last has its block, hash, certificate and results,
        the hash index agrees, no tx points outside the chain and nothing
        exists above the last height. Cost: one pass over the store, plus a
        hash per height in memory.
        """
        return _Verifier(self).run()


class CommitRun:
    """Consecutive heights committed in ONE atomic, durable write batch.

    Why: a node catching up, or committing several pipelined heights at once,
    paid one fsync per height; a run pays one. Why not ``sync=False`` for all
    but the last height: LevelDB closes a log file without fsync when its
    memtable fills, so a crash could lose an unsynced height below a synced
    one. One batch is one log record, which LevelDB recovers whole or drops:
    after a crash the store ends at the end of some run, never inside one.

    The run is a :class:`storage.api.StateReader` of the store plus the writes
    of the heights added so far (the latest write of a key wins), so height
    ``h + 1`` is applied on top of ``h`` before either is on disk. Memory:
    every distinct key the run writes, once; the caller bounds the run.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ops: dict[bytes, bytes | None] = {}  # stored key -> payload, None: delete
        self._state_keys: list[bytes] = []  # stored state keys in _ops, sorted (for scans)
        self._hashes: set[bytes] = set()
        self._last = store.latest_height()
        self._state_root: bytes | None = None
        self._written = False
        self.heights: list[int] = []

    @property
    def last_height(self) -> int | None:
        """The last height added (or the store's last one, for an empty run)."""
        return self._last

    def add(self, bundle: CommitBundle) -> None:
        """Append the next height; :class:`InvalidBundleError` leaves the run as it was."""
        if self._written:
            raise ValueError("this run is already written")
        store = self._store
        store._validate_header(bundle, self._last, self._hashes)
        first = store.base_height() is None and not self.heights
        ops = store._bundle_ops(bundle, first)
        merged = self._ops
        new_state = [k for k, _ in ops if k[:1] == _STATE and k not in merged]
        merged.update(ops)
        if new_state:
            # Each bundle's state keys arrive mostly sorted; sorting two sorted
            # runs is a linear merge for Python's sort.
            self._state_keys.extend(sorted(new_state))
            self._state_keys.sort()
        self._hashes.add(bundle.block_hash)
        self._last = bundle.height
        self._state_root = bundle.state_root
        self.heights.append(bundle.height)

    def write(self) -> None:
        """Write every added height in one synced batch; then the store shows them."""
        if self._written:
            raise ValueError("this run is already written")
        self._written = True
        if not self.heights:
            return
        sealed = _Sealer()
        put, delete = sealed.put, sealed.delete
        for key, value in self._ops.items():
            if value is None:
                delete(key)
            else:
                put(key, value)
        store = self._store
        store._write(sealed)
        assert self._last is not None and self._state_root is not None
        store._written_run(len(self.heights), self._last, self._state_root)

    # --- StateReader over the run ------------------------------------------------

    def get_state(self, key: bytes) -> bytes | None:
        stored = _STATE + key
        if stored in self._ops:
            return self._ops[stored]
        return self._store.get_state(key)

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        stored = _TREE + node_id
        if stored in self._ops:
            return self._ops[stored]
        return self._store.get_tree_node(node_id)

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The store's scan with the run's writes merged in, in key order."""
        start = schema.state_key(prefix)
        stop = schema.prefix_end(start)
        keys = self._state_keys
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
        mine = keys[lo:hi]
        if not mine:
            yield from self._store.scan_state(prefix)
            return
        ops = self._ops
        i = 0
        for key, value in self._store._iterate(start, stop):
            while i < len(mine) and mine[i] < key:
                pending = ops[mine[i]]
                if pending is not None:
                    yield mine[i][1:], pending
                i += 1
            if i < len(mine) and mine[i] == key:
                pending = ops[key]
                if pending is not None:
                    yield key[1:], pending
                i += 1
                continue
            yield key[1:], value
        for k in mine[i:]:
            pending = ops[k]
            if pending is not None:
                yield k[1:], pending

    def has_blob(self, blob_hash: bytes) -> bool:
        stored = _BLOB + blob_hash
        if stored in self._ops:
            return self._ops[stored] is not None
        return self._store.has_blob(blob_hash)


def _meta_name(name: str) -> str:
    value = str(name)
    if not value or not value.isascii():
        raise ValueError("metadata name must be non-empty ascii")
    return value


def _check_bytes(value: object, *, allow_none: bool) -> None:
    if not isinstance(value, bytes) and not (allow_none and value is None):
        raise TypeError(f"a value is {type(value).__name__}, not bytes")


def _check_hash(what: str, value: object) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise InvalidBundleError(f"{what} is not {HASH_SIZE} bytes")


class _Sealer:
    """Collects the ops of one batch, every value framed by its checksum."""

    __slots__ = ("deletes", "ops", "size")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.size = 0  # bytes of keys and framed values
        self.deletes = 0

    def put(self, key: bytes, payload: bytes) -> None:
        stored = seal(key, payload)
        self.size += len(key) + len(stored)
        self.ops.append((key, stored))

    def delete(self, key: bytes) -> None:
        self.size += len(key)
        self.deletes += 1
        self.ops.append((key, None))


_TX = Namespace.TX_LOCATION.value
_STATE = Namespace.STATE.value
_TREE = Namespace.TREE.value
_BLOB = Namespace.BLOB.value

# Exact key length per namespace (namespaces missing here have free-form keys).
_KEY_SIZES: dict[Namespace, int] = {
    **dict.fromkeys(schema.HEIGHT_NAMESPACES, 1 + schema.HEIGHT_SIZE),
    Namespace.HEIGHT_BY_HASH: 1 + HASH_SIZE,
    Namespace.TX_LOCATION: 1 + HASH_SIZE,
    Namespace.BLOB: 1 + HASH_SIZE,
    Namespace.WAL: 1 + schema.HEIGHT_SIZE,
    Namespace.EVIDENCE: 1 + schema.HEIGHT_SIZE,
}


class _Verifier:
    """One pass of :meth:`Store.verify`."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.counts: dict[Namespace, int] = dict.fromkeys(Namespace, 0)
        self.heights: dict[Namespace, set[int]] = {ns: set() for ns in schema.HEIGHT_NAMESPACES}
        self.hash_at: dict[int, bytes] = {}
        self.height_by_hash: dict[bytes, int] = {}
        self.tx_heights: set[int] = set()
        self.meta: dict[str, bytes] = {}

    def run(self) -> VerifyReport:
        keys = size = 0
        for key, raw in self._store.kv.iterate(b"", None):
            keys += 1
            size += len(key) + len(raw)
            self._entry(key, raw)
        base, last = self._chain()
        return VerifyReport(
            keys=keys,
            bytes=size,
            base_height=base,
            last_height=last,
            per_namespace=tuple((ns.label, self.counts[ns]) for ns in Namespace),
        )

    def _entry(self, key: bytes, raw: bytes) -> None:
        ns = schema.namespace_of(key)
        if ns is None:
            raise CorruptionError(f"key outside the schema: {describe_key(key)}")
        payload = unseal(key, raw)
        self.counts[ns] += 1
        expected = _KEY_SIZES.get(ns)
        if expected is not None and len(key) != expected:
            raise CorruptionError(f"key of the wrong size: {describe_key(key)}")
        if ns in self.heights:
            h = schema.height_of_key(key)
            self.heights[ns].add(h)
            if ns is Namespace.BLOCK_HASH:
                if len(payload) != HASH_SIZE:
                    raise CorruptionError(f"bad block hash at {describe_key(key)}")
                self.hash_at[h] = payload
        elif ns is Namespace.HEIGHT_BY_HASH:
            if len(payload) != schema.HEIGHT_SIZE:
                raise CorruptionError(f"bad height at {describe_key(key)}")
            self.height_by_hash[key[1:]] = schema.decode_height(payload)
        elif ns is Namespace.TX_LOCATION:
            if len(payload) != schema.LOCATION_SIZE:
                raise CorruptionError(f"bad tx location at {describe_key(key)}")
            self.tx_heights.add(schema.decode_location(payload)[0])
        elif ns is Namespace.META:
            try:
                name = key[1:].decode("ascii")
            except UnicodeDecodeError:
                raise CorruptionError(f"bad metadata name at {describe_key(key)}") from None
            self.meta[name] = payload

    def _height_meta(self, name: Meta) -> int | None:
        raw = self.meta.get(name.value)
        if raw is None:
            return None
        if len(raw) != schema.HEIGHT_SIZE:
            raise CorruptionError(f"metadata {name.value} has the wrong size")
        return schema.decode_height(raw)

    def _chain(self) -> tuple[int | None, int | None]:
        version = self._height_meta(Meta.SCHEMA_VERSION)
        if version != schema.SCHEMA_VERSION:
            raise CorruptionError(f"schema version is {version}, expected {schema.SCHEMA_VERSION}")
        base = self._height_meta(Meta.BASE_HEIGHT)
        last = self._height_meta(Meta.LAST_HEIGHT)
        if base is None or last is None:
            if base is not None or last is not None:
                raise CorruptionError("metadata has only one of base_height and last_height")
            stray = [ns.label for ns, hs in self.heights.items() if hs]
            if stray or self.height_by_hash or self.tx_heights:
                raise CorruptionError(f"empty chain but heights stored in {stray or 'indexes'}")
            return None, None
        if base > last:
            raise CorruptionError(f"base height {base} above last height {last}")
        want = last - base + 1
        for ns, hs in self.heights.items():
            if len(hs) != want or min(hs) != base or max(hs) != last:
                missing = sorted(set(range(base, last + 1)) - hs)[:5]
                extra = sorted(h for h in hs if not base <= h <= last)[:5]
                raise CorruptionError(
                    f"{ns.label} is not the whole chain {base}..{last}: "
                    f"missing {missing}, outside {extra}"
                )
        if len(self.height_by_hash) != want:
            raise CorruptionError(f"hash index has {len(self.height_by_hash)} entries, want {want}")
        for h, block_hash in self.hash_at.items():
            if self.height_by_hash.get(block_hash) != h:
                raise CorruptionError(f"hash index disagrees at height {h}")
        if self.meta.get(Meta.LAST_BLOCK_HASH.value) != self.hash_at[last]:
            raise CorruptionError("last_block_hash does not match the block at last_height")
        if Meta.STATE_ROOT.value not in self.meta:
            raise CorruptionError("state root missing")
        if self.meta[Meta.STATE_ROOT.value] != self._store.state_root_at(last):
            raise CorruptionError("state_root does not match the root stored at last_height")
        outside = sorted(h for h in self.tx_heights if not base <= h <= last)[:5]
        if outside:
            raise CorruptionError(f"tx index points outside the chain: heights {outside}")
        return base, last


def open_leveldb(path: str | os.PathLike[str], *, create: bool = True, sync: bool = True) -> Store:
    """Open (or create) the store in a LevelDB directory.

    ``sync=False`` is for benchmarks that want the cost without fsync; a node
    always runs with the default.
    """
    kv = LevelDBKV(path, create=create)
    opened = False
    try:
        store = Store(kv, sync=sync)
        opened = True
    finally:
        if not opened:
            kv.close()
    return store


def open_memory(kv: MemoryKV | None = None) -> Store:
    """A store in memory (tests); pass ``old_kv.reopened()`` to simulate a restart."""
    return Store(kv if kv is not None else MemoryKV())
