"""Write-ahead log of this node's own votes and what it must not forget.

Why: a validator that signs PREPARE for one block, crashes, and after restart
signs PREPARE for another block at the same view and height is Byzantine in
everyone's eyes. So every own signed message (and every prepared proof, which
a later VIEW-CHANGE must report) is appended here and fsynced *before* the
message leaves the node; after a restart the core replays the log and re-sends
the identical bytes instead of signing anew.

Format: a sequence of frames ``length (u32 BE) | crc32 (u32 BE) | payload``,
``payload`` the canonical encoding of a :data:`WalRecord`. On open:

* a short or CRC-bad *last* frame is a torn write (the crash hit mid-append): it
  was never synced, so no message depending on it was sent; it is truncated;
* a bad frame with bytes after it, a length that runs past intact frames, a
  length over the limit or a CRC-good frame that does not decode is real
  corruption: :class:`WALCorruptionError` naming
  the offset, and the node must not start.

The log stays bounded: when a checkpoint becomes stable the core asks for a
rewrite holding only what is above it, done atomically (temp file, fsync,
rename, fsync of the directory).

A write that fails (a full disk, an I/O error) raises
:class:`~ledger.errors.StorageIOError` (``StorageFullError`` for ENOSPC) and
the log refuses every later append and sync: after a failed fsync the kernel
may have dropped the dirty pages, so a later fsync that "succeeds" proves
nothing. The service performs a send only after its sync returned, so a vote
whose sync failed is never sent; the node stops, and on restart the frames
that did reach the disk are replayed (a partial last one is a torn tail).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from consensus.errors import WALCorruptionError
from consensus.messages import CheckpointProof, PreparedProof
from ledger import codec
from ledger.codec import Record
from ledger.errors import LedgerError, StorageIOError, storage_io_error

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">II")


class WalVote(Record, frozen=True, tag=1):
    """An own signed message (an encoded :class:`consensus.messages.Envelope`)."""

    envelope: bytes


class WalPrepared(Record, frozen=True, tag=2):
    proof: PreparedProof


class WalStable(Record, frozen=True, tag=3):
    proof: CheckpointProof


WalRecord = WalVote | WalPrepared | WalStable


class WalStore(Protocol):
    """What the driver needs from a WAL; :class:`FileWAL` and :class:`MemoryWAL` provide it."""

    def records(self) -> list[WalRecord]: ...

    def append(self, record: WalRecord) -> None: ...

    def sync(self) -> None: ...

    def rewrite(self, records: Sequence[WalRecord]) -> None: ...


def encode_frame(record: WalRecord) -> bytes:
    payload = codec.encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan_frames(data: bytes) -> tuple[list[WalRecord], int]:
    """Parse ``data``; return the records and the length of the valid prefix.

    A torn last frame ends the valid prefix; any other damage raises.
    """
    records: list[WalRecord] = []
    off = 0
    end = len(data)
    while off < end:
        if end - off < _HEADER.size:
            break  # torn header
        length, crc = _HEADER.unpack_from(data, off)
        if length > MAX_FRAME:
            raise WALCorruptionError(f"frame length {length} over limit", off)
        body_start = off + _HEADER.size
        body_end = body_start + length
        if body_end > end:
            # Torn body -- unless a damaged length hides intact frames behind it.
            if _intact_frame_within(data, off + 1):
                raise WALCorruptionError("frame length runs past intact frames", off)
            break
        payload = data[body_start:body_end]
        if zlib.crc32(payload) != crc:
            if body_end == end:
                break  # torn last frame
            raise WALCorruptionError("CRC mismatch", off)
        try:
            records.append(codec.decode(payload, WalRecord))  # type: ignore[arg-type]
        except LedgerError:
            raise WALCorruptionError("undecodable record", off) from None
        off = body_end
    return records, off


def _intact_frame_within(data: bytes, start: int) -> bool:
    """True if some complete, CRC-valid frame begins at or after ``start``."""
    end = len(data)
    for pos in range(start, end - _HEADER.size + 1):
        length, crc = _HEADER.unpack_from(data, pos)
        body = pos + _HEADER.size
        if 0 < length <= end - body and zlib.crc32(data[body : body + length]) == crc:
            return True
    return False


class FileWAL:
    """The on-disk WAL. Not thread-safe; owned by one consensus service."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self.truncated_bytes = 0
        self._failed: StorageIOError | None = None
        data = self.path.read_bytes() if self.path.exists() else b""
        self._records, valid = scan_frames(data)
        try:
            if valid < len(data):
                self.truncated_bytes = len(data) - valid
                with open(self.path, "r+b") as fh:
                    fh.truncate(valid)
                    self._sync_fd(fh.fileno())
            self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the WAL
        except OSError as exc:
            raise storage_io_error(self._where, exc) from None
        self._dirty = False

    @property
    def _where(self) -> str:
        return f"consensus WAL {self.path}"

    def _fail(self, exc: OSError) -> StorageIOError:
        """Remember the first failed write: the log is unusable from here on."""
        self._failed = storage_io_error(self._where, exc)
        return self._failed

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise type(self._failed)(self._where, "an earlier write failed")

    def _sync_fd(self, fd: int) -> None:
        if self._fsync:
            os.fsync(fd)

    def records(self) -> list[WalRecord]:
        """The records found when the log was opened."""
        return list(self._records)

    def append(self, record: WalRecord) -> None:
        self._check_usable()
        try:
            self._fh.write(encode_frame(record))  # may flush a full buffer
        except OSError as exc:
            raise self._fail(exc) from None
        self._dirty = True

    def sync(self) -> None:
        """Make every appended record durable; :class:`StorageIOError` if the disk refuses."""
        self._check_usable()
        if self._dirty:
            try:
                self._fh.flush()
                self._sync_fd(self._fh.fileno())
            except OSError as exc:
                raise self._fail(exc) from None
            self._dirty = False

    def rewrite(self, records: Sequence[WalRecord]) -> None:
        self.sync()
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                for r in records:
                    fh.write(encode_frame(r))
                fh.flush()
                self._sync_fd(fh.fileno())
            os.replace(tmp, self.path)
            if self._fsync:
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self._fh.close()
            self._fh = open(self.path, "ab")  # noqa: SIM115
        except OSError as exc:
            with contextlib.suppress(OSError):  # a failed rewrite leaves the old log in place
                tmp.unlink(missing_ok=True)
            raise self._fail(exc) from None
        self._records = list(records)

    def size(self) -> int:
        self._fh.flush()
        return self.path.stat().st_size

    def close(self) -> None:
        """Sync and close; after a failed write, close without a sync and without raising.

        Closing retries the buffered tail once: whether it lands whole, in part
        (a torn tail, cut on the next open) or not at all, those records were
        never sent, so no other node has seen anything the log lacks.
        """
        try:
            if self._failed is None:
                self.sync()
        finally:
            with contextlib.suppress(OSError):
                self._fh.close()


class MemoryWAL:
    """An in-memory WAL with crash semantics, for simulations.

    Appended records become durable only at :meth:`sync`; :meth:`crash` drops
    the rest, as a power cut would drop unsynced writes.
    """

    def __init__(self, records: Iterable[WalRecord] = ()) -> None:
        self._durable: list[WalRecord] = list(records)
        self._pending: list[WalRecord] = []

    def records(self) -> list[WalRecord]:
        return list(self._durable)

    def append(self, record: WalRecord) -> None:
        self._pending.append(record)

    def sync(self) -> None:
        self._durable.extend(self._pending)
        self._pending.clear()

    def rewrite(self, records: Sequence[WalRecord]) -> None:
        self._pending.clear()
        self._durable = list(records)

    def crash(self) -> None:
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._durable)
