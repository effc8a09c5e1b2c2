"""The raw key-value layer: one small protocol, a LevelDB backend and its in-memory twin.

Everything above this layer (schema, checksums, the commit batch, reads) is
shared code, so a test that passes on :class:`MemoryKV` exercises the same
logic that runs on :class:`LevelDBKV`. The twin keeps LevelDB's semantics
that matter to us: bytewise key order, half-open ``[start, stop)`` ranges,
iterators that see a snapshot taken when they were created, and a write batch
that is applied entirely or not at all.

Values here are opaque bytes; checksums are added one layer up
(:mod:`storage.checksum`). One writer at a time: the node funnels writes
through one task.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Iterator
from typing import Protocol

import plyvel

from ledger.errors import CorruptionError, StorageIOError, StoreUnavailableError, storage_io_error

# One batch entry: put (key, value) or delete (key, None).
Op = tuple[bytes, bytes | None]

#: LevelDB's ``max_open_files``, which sizes its table cache (this minus 10
#: files, 64 tables; LevelDB raises any lower value to this). Why so small:
#: LevelDB memory-maps every table it holds open (up to 1,000 maps on 64-bit)
#: and each page it ever read stays in the node's resident set until the table
#: is closed, so with the default of 1,000 the node's RSS grew with the chain.
#: After 1,000,000 txs (4 validators, ~360 MB of tables per node) the mapped
#: tables held 130-146 MB of RSS at the default and 71-84 MB at this value,
#: peaks 397-430 MB against 320-325 MB; the start-up ``Store.verify`` pass,
#: which reads every table, put all 350 MB of a 1M-tx store into RSS at the
#: default and 127 MB at this value. Bound: 64 tables x ~2 MiB
#: (``max_file_size``) of mapped pages. Cost: a table not in the cache is
#: reopened on a read; over that 1M-tx run the nodes at this value used 3-6 %
#: more CPU than those at the default (BENCHMARKS.md, issue 6).
MAX_OPEN_FILES = 74


class KV(Protocol):
    """What the store needs from a key-value backend."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) with ``start <= key < stop`` (no upper bound if None),
        in bytewise key order, as of the moment of the call."""
        ...

    def write(self, ops: Iterable[Op], *, sync: bool) -> None:
        """Apply ``ops`` in order, atomically: all of them or none.

        If consuming ``ops`` raises, nothing is written. ``sync`` makes the
        write durable (fsync) before returning.
        """
        ...

    def compact(self, start: bytes, stop: bytes | None) -> None:
        """Physically drop deleted and overwritten values in ``[start, stop)``."""
        ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...


class LevelDBKV:
    """:class:`KV` over a LevelDB directory (plyvel).

    Opened with ``paranoid_checks`` (LevelDB refuses to open a store with
    detected corruption rather than silently dropping data; a torn write at the
    tail of the log after a crash is still recovered, as LevelDB intends) and
    reads verify LevelDB's block checksums. Compression is off: values are
    mostly ciphertexts and hashes that do not compress, and uncompressed files
    keep the raw "no plaintext at rest" scan honest. At most
    :data:`MAX_OPEN_FILES` files open, which bounds the memory its mapped
    tables hold.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = os.fspath(path)
        try:
            self._db = plyvel.DB(
                self.path,
                create_if_missing=create,
                paranoid_checks=True,
                compression=None,
                # Most point reads on the hot path ask for keys that do not exist
                # (a tx hash not yet committed, a patient not yet registered); a
                # bloom filter answers them from memory (~1.25 bytes per key)
                # instead of reading a block of every table that might hold them.
                bloom_filter_bits=10,
                max_open_files=MAX_OPEN_FILES,
            )
        except plyvel.CorruptionError as exc:
            raise CorruptionError(f"LevelDB at {self.path} is corrupt: {_msg(exc)}") from None
        except plyvel.Error as exc:
            if isinstance(exc, plyvel.IOError):  # opening writes too (a new log and manifest)
                error = storage_io_error(f"LevelDB at {self.path}", exc)
                if error.full:
                    raise error from None
            message = f"cannot open LevelDB at {self.path}: {_msg(exc)}"
            raise StoreUnavailableError(message) from None

    def get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._db.get(key, verify_checksums=True)
        except plyvel.CorruptionError as exc:
            raise CorruptionError(f"LevelDB read failed: {_msg(exc)}") from None
        return value

    def iterate(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iterator(start=start, stop=stop, verify_checksums=True)
        return _translate_corruption(it)

    def write(self, ops: Iterable[Op], *, sync: bool) -> None:
        """Raises :class:`StorageIOError` (:class:`StorageFullError` on a full disk)
        when LevelDB cannot write; LevelDB then refuses every later write too, and
        what earlier batches wrote stays whole."""
        batch = self._db.write_batch(sync=sync)
        for key, value in ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        try:
            batch.write()
        except plyvel.Error as exc:
            raise self._write_error(exc) from None

    def _write_error(self, exc: plyvel.Error) -> CorruptionError | StorageIOError:
        if isinstance(exc, plyvel.CorruptionError):
            return CorruptionError(f"LevelDB at {self.path} refused a write: {_msg(exc)}")
        return storage_io_error(f"LevelDB at {self.path}", exc)

    def compact(self, start: bytes, stop: bytes | None) -> None:
        """Rewrite every table holding keys of ``[start, stop)`` so deleted values are gone.

        A bare ``compact_range`` is not enough: LevelDB compacts each level
        into the next one only up to the deepest level holding the range, so a
        table on that deepest level is never rewritten, and a table flushed
        from the memtable with both a value and its delete inside lands there
        directly. So: (1) flush the memtable; (2) write delete markers at both
        ends of the range, which flush into a table spanning the whole range
        on a level above the data; (3) compact, which now merges every level
        of the range down into the deepest one, rewriting its tables and
        dropping each value a newer delete hides. The markers are deletes of
        keys that hold nothing, so a crash at any step leaves no stray data.
        Tested by a raw byte scan of the files (tests/storage/test_erasure.py).
        """
        if stop is not None and stop <= start:
            return
        try:
            self._db.compact_range(start=start, stop=stop)
            batch = self._db.write_batch()
            batch.delete(start)
            batch.delete(_last_key_below(stop))
            batch.write()
            self._db.compact_range(start=start, stop=stop)
        except plyvel.Error as exc:
            raise self._write_error(exc) from None

    def close(self) -> None:
        self._db.close()

    @property
    def closed(self) -> bool:
        return bool(self._db.closed)


def _msg(exc: BaseException) -> str:
    """plyvel's message (it carries bytes) as text."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _last_key_below(stop: bytes | None) -> bytes:
    """A key below ``stop`` and above every key of up to 64 bytes past its prefix."""
    if stop is None:
        return b"\xff" * 64
    if stop.endswith(b"\x00"):
        return stop[:-1]
    return stop[:-1] + bytes([stop[-1] - 1]) + b"\xff" * 64


def _translate_corruption(
    it: Iterator[tuple[bytes, bytes]],
) -> Iterator[tuple[bytes, bytes]]:
    try:
        yield from it
    except plyvel.CorruptionError as exc:
        raise CorruptionError(f"LevelDB iteration failed: {_msg(exc)}") from None


class _MemoryData:
    """The contents of a :class:`MemoryKV`, shared by its reopened handles.

    Keys are kept sorted lazily: writes only touch the dict and note what
    changed, and the sorted list is brought up to date by the next iteration
    (one C-level sort of two sorted runs), so a commit of thousands of keys
    costs no per-key list insertion.
    """

    __slots__ = ("added", "indexed", "removed", "sorted_keys", "values")

    def __init__(self) -> None:
        self.values: dict[bytes, bytes] = {}
        self.sorted_keys: list[bytes] = []  # sorted, as of the last sort
        self.indexed: set[bytes] = set()  # the same keys, for membership
        self.added: list[bytes] = []  # keys that may be missing from sorted_keys
        self.removed = False  # some key of sorted_keys may have been deleted

    def keys(self) -> list[bytes]:
        if self.removed:
            self.sorted_keys = [k for k in self.sorted_keys if k in self.values]
            self.indexed = set(self.sorted_keys)
            self.removed = False
        if self.added:
            fresh = {k for k in self.added if k in self.values and k not in self.indexed}
            self.added = []
            if fresh:
                self.indexed |= fresh
                self.sorted_keys.extend(fresh)
                self.sorted_keys.sort()
        return self.sorted_keys


class MemoryKV:
    """:class:`KV` in memory, deterministic, with LevelDB's ordering and batch semantics.

    :meth:`reopened` returns a fresh handle on the same contents, the way
    reopening a LevelDB directory does, so restart paths run on both backends.
    """

    def __init__(self, data: _MemoryData | None = None) -> None:
        self._data = data if data is not None else _MemoryData()
        self._closed = False

    def reopened(self) -> MemoryKV:
        """A new open handle on the same contents (call after :meth:`close`)."""
        return MemoryKV(self._data)

    def _check_open(self) -> _MemoryData:
        if self._closed:
            raise RuntimeError("Database is closed")
        return self._data

    def get(self, key: bytes) -> bytes | None:
        return self._check_open().values.get(bytes(key))

    def iterate(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        data = self._check_open()
        keys = data.keys()
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if stop is None else bisect.bisect_left(keys, stop)
        # Snapshot now, like a LevelDB iterator: later writes are not seen.
        values = data.values
        return iter([(k, values[k]) for k in keys[lo:hi]])

    def write(self, ops: Iterable[Op], *, sync: bool) -> None:
        data = self._check_open()
        pending: list[Op] = []
        for key, value in ops:  # consume first: a failure here writes nothing
            if not isinstance(key, bytes) or not (value is None or isinstance(value, bytes)):
                raise TypeError("keys and values must be bytes")
            pending.append((key, value))
        values = data.values
        for key, value in pending:
            if value is None:
                if values.pop(key, None) is not None:
                    data.removed = True
            else:
                if key not in values:
                    data.added.append(key)
                values[key] = value

    def compact(self, start: bytes, stop: bytes | None) -> None:
        self._check_open()  # nothing to do: a deleted value is gone at once

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def raw_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Everything, for scans in tests (same as ``iterate(b"", None)``)."""
        return self.iterate(b"", None)
