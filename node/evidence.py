"""Equivocation evidence, kept: both signed messages, the sender, the view and the height.

Why: the PBFT core detects a validator that signs two different messages for
one slot and emits :class:`consensus.core.Evidence` (the two encoded, signed
messages). A log line and a counter tell an operator that it happened; an
auditor or the other hospitals need the proof itself, after a restart too.
The core stays pure: the node hands each effect to
:meth:`EvidenceRecorder.record_nowait` and this module persists it.

Where: the store's node-local ``EVIDENCE`` namespace
(:func:`storage.schema.evidence_key`), never part of a commit, the state root
or state transfer. Entry ``seq`` counts up from 1 in the order this node
detected them; the oldest are dropped first, so the entries held are always
the contiguous range ``first..last`` and a page, newest first, is one range
read.

Bounds (a Byzantine validator chooses how much evidence it produces):

* one entry per slot, ``(validator, kind, view, height)``: a hundred
  conflicting messages for one slot prove nothing the first pair does not;
* at most ``max_entries`` entries and ``max_bytes`` of stored values (a
  PRE-PREPARE's evidence carries two whole blocks), the oldest dropped first;
* a bounded queue between the Trio thread and the writer; what does not fit
  is counted in :meth:`EvidenceRecorder.statistics`, never buffered.

Threads: the store writes (LevelDB fsync) and the page reads (an entry can
hold two 4 MiB blocks) run in worker threads; :class:`EvidenceLog` serialises
them with a lock. Only :meth:`EvidenceRecorder.record_nowait` runs on the
Trio thread, and it only queues.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from consensus.core import Evidence
from consensus.messages import Envelope, SignedViewChange
from ledger import codec
from ledger.codec import Record
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

__all__ = [
    "EvidenceEntry",
    "EvidenceLog",
    "EvidencePage",
    "EvidenceRecorder",
    "EvidenceSettings",
    "EvidenceStatistics",
    "EvidenceStore",
    "StoredEvidence",
    "describe",
    "page_body",
]

log = logging.getLogger(__name__)

#: The core's kind labels (``Evidence.kind``) for votes, as message names.
_VOTE_KINDS = {"pp": "PrePrepare", "p": "Prepare", "c": "Commit"}


class StoredEvidence(Record, frozen=True):
    """One equivocation as stored and served.

    ``first`` and ``second`` are the two messages exactly as signed and sent
    (an encoded :class:`~consensus.messages.Envelope`, or for a view change a
    :class:`~consensus.messages.SignedViewChange`): anyone holding the
    genesis validator keys can check both signatures. ``view`` is None for a
    checkpoint, ``height`` for a view change. ``detected_height`` (this
    node's committed height) and ``detected_at_ms`` (its wall clock) are
    node-local facts, never hashed, signed or replicated.
    """

    validator: bytes
    kind: str
    view: int | None
    height: int | None
    first: bytes
    second: bytes
    detected_height: int
    detected_at_ms: int


def describe(evidence: Evidence, *, detected_height: int, detected_at_ms: int) -> StoredEvidence:
    """The stored form of a core ``Evidence``: kind, view and height read from the messages."""
    kind = _VOTE_KINDS.get(evidence.kind, evidence.kind)
    view: int | None = None
    height: int | None = None
    try:
        if evidence.kind == "ViewChange":
            vc = codec.decode(evidence.first, SignedViewChange, max_size=len(evidence.first))
            view = vc.view_change.new_view
        else:
            payload = codec.decode(evidence.first, Envelope, max_size=len(evidence.first)).payload
            kind = type(payload).__name__
            view = getattr(payload, "view", None)
            height = getattr(payload, "height", None)
    except LedgerError:  # the core checked both messages; keep the proof even so
        log.warning("evidence of kind %s does not decode; stored without view and height", kind)
    return StoredEvidence(
        validator=evidence.validator,
        kind=kind,
        view=view,
        height=height,
        first=evidence.first,
        second=evidence.second,
        detected_height=detected_height,
        detected_at_ms=detected_at_ms,
    )


# --- the log (worker threads) -----------------------------------------------------------


class EvidenceStore(Protocol):
    """The part of :class:`storage.store.Store` the evidence log uses."""

    def write_evidence(self, puts: Iterable[tuple[int, bytes]], deletes: Iterable[int]) -> None: ...

    def iter_evidence(self, start: int, stop: int | None = None) -> Iterator[tuple[int, bytes]]: ...


@dataclass(frozen=True, slots=True)
class EvidenceSettings:
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    #: Effects waiting for the writer; more are dropped and counted.
    queue_size: int = 256
    #: A page stops before its messages pass this many bytes (it holds at least one entry).
    max_page_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if min(self.max_entries, self.max_bytes, self.queue_size, self.max_page_bytes) < 1:
            raise ValueError("evidence limits must be >= 1")


@dataclass(frozen=True, slots=True)
class EvidenceEntry:
    seq: int
    evidence: StoredEvidence


@dataclass(frozen=True, slots=True)
class EvidencePage:
    """Newest first; ``next_before`` continues the listing (None: nothing older)."""

    entries: list[EvidenceEntry]
    next_before: int | None
    retained: int


_Slot = tuple[bytes, str, int | None, int | None]


def _slot(e: StoredEvidence) -> _Slot:
    return (e.validator, e.kind, e.view, e.height)


class EvidenceLog:
    """The stored evidence: append (deduplicated, bounded) and page, from any thread.

    Opening reads every held entry once (bounded by the retention limits) to
    rebuild the slot index and the byte count.
    """

    def __init__(self, store: EvidenceStore, settings: EvidenceSettings | None = None) -> None:
        self.settings = settings if settings is not None else EvidenceSettings()
        self._store = store
        self._lock = threading.Lock()
        #: (seq, stored size, slot) of every held entry, oldest first.
        self._held: collections.deque[tuple[int, int, _Slot]] = collections.deque()
        self._slots: set[_Slot] = set()
        self._bytes = 0
        self._last = 0
        for seq, raw in store.iter_evidence(0):
            try:
                slot = _slot(codec.decode(raw, StoredEvidence, max_size=len(raw)))
            except LedgerError:  # unreadable (an older format?): kept, never a dedup key
                slot = (b"", f"undecodable-{seq}", None, None)
            self._held.append((seq, len(raw), slot))
            self._slots.add(slot)
            self._bytes += len(raw)
            self._last = seq
        self.duplicates = 0
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def last_seq(self) -> int:
        return self._last

    def append(self, items: Iterable[StoredEvidence]) -> int:
        """Store the new slots among ``items`` in one batch; the number stored."""
        s = self.settings
        with self._lock:
            puts: list[tuple[int, bytes]] = []
            drops: list[int] = []
            for item in items:
                slot = _slot(item)
                if slot in self._slots:
                    self.duplicates += 1
                    continue
                raw = codec.encode(item)
                self._last += 1
                puts.append((self._last, raw))
                self._held.append((self._last, len(raw), slot))
                self._slots.add(slot)
                self._bytes += len(raw)
                while len(self._held) > 1 and (
                    len(self._held) > s.max_entries or self._bytes > s.max_bytes
                ):
                    seq, size, old = self._held.popleft()
                    self._slots.discard(old)
                    self._bytes -= size
                    drops.append(seq)
                    self.pruned += 1
            # An entry added and dropped in one batch is never written.
            dropped = set(drops)
            added = {seq for seq, _ in puts}
            self._store.write_evidence(
                [p for p in puts if p[0] not in dropped], [d for d in drops if d not in added]
            )
            return len(puts)

    def page(self, limit: int, before: int | None = None) -> EvidencePage:
        """Up to ``limit`` entries with ``seq < before`` (default: all), newest first."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        with self._lock:
            first = self._held[0][0] if self._held else 1
            retained = len(self._held)
        top = self._last if before is None else min(before - 1, self._last)
        lo = max(first, top - limit + 1)
        out: list[EvidenceEntry] = []
        size = 0
        for seq in range(top, lo - 1, -1):  # one entry at a time: entries can be large
            for _seq, raw in self._store.iter_evidence(seq, seq + 1):
                try:
                    item = codec.decode(raw, StoredEvidence, max_size=len(raw))
                except LedgerError:
                    continue
                size += len(item.first) + len(item.second)
                if out and size > self.settings.max_page_bytes:
                    return EvidencePage(out, out[-1].seq, retained)
                out.append(EvidenceEntry(seq, item))
        return EvidencePage(out, lo if lo > first else None, retained)


def page_body(page: EvidencePage) -> dict[str, Any]:
    """``GET /v1/evidence``'s answer (bytes are rendered as lowercase hex by the API)."""
    return {
        "retained": page.retained,
        "next_before": page.next_before,
        "evidence": [
            {
                "seq": e.seq,
                "validator": e.evidence.validator,
                "kind": e.evidence.kind,
                "view": e.evidence.view,
                "height": e.evidence.height,
                "detected_height": e.evidence.detected_height,
                "detected_at_ms": e.evidence.detected_at_ms,
                "first": e.evidence.first,
                "second": e.evidence.second,
            }
            for e in page.entries
        ],
    }


# --- the recorder (Trio) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvidenceStatistics:
    received: int  # effects handed to record_nowait
    dropped: int  # the queue was full
    stored: int  # new entries written
    duplicates: int  # a slot already held
    pruned: int  # dropped to keep within the bounds
    retained: int


class EvidenceRecorder:
    """Queues the core's evidence on the Trio thread and stores it from a worker thread.

    Lifetime: ``await nursery.start(recorder.run)``; it writes until
    cancelled. ``clock_ms`` is the wall clock (node-local detection time);
    ``height`` returns this node's committed height.
    """

    def __init__(
        self,
        evidence_log: EvidenceLog,
        *,
        clock_ms: Callable[[], int],
        height: Callable[[], int],
    ) -> None:
        self.log = evidence_log
        self._clock_ms = clock_ms
        self._height = height
        self._send, self._recv = trio.open_memory_channel[tuple[Evidence, int, int]](
            evidence_log.settings.queue_size
        )
        self._received = 0
        self._dropped = 0
        self._stored = 0

    def record_nowait(self, evidence: Evidence) -> None:
        """Queue one effect of the core (Trio thread; never blocks, never raises)."""
        self._received += 1
        try:
            self._send.send_nowait((evidence, self._height(), self._clock_ms()))
        except trio.WouldBlock:
            self._dropped += 1

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what is queued, a batch per worker-thread call, until cancelled."""
        task_status.started()
        while True:
            batch = [await self._recv.receive()]
            while len(batch) < 64:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            stored = await trio.to_thread.run_sync(self._store_batch, batch)
            self._stored += stored
            if stored:
                log.info("stored %d new equivocation evidence entries", stored)

    def _store_batch(self, batch: list[tuple[Evidence, int, int]]) -> int:
        """Worker thread: decode (a PRE-PREPARE carries a block) and append."""
        return self.log.append(
            describe(e, detected_height=h, detected_at_ms=t) for e, h, t in batch
        )

    def statistics(self) -> EvidenceStatistics:
        return EvidenceStatistics(
            received=self._received,
            dropped=self._dropped,
            stored=self._stored,
            duplicates=self.log.duplicates,
            pruned=self.log.pruned,
            retained=len(self.log),
        )
