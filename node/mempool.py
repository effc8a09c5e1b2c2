"""The mempool: admitted transactions waiting for a block, and their gossip.

Shaped like CometBFT's mempool (``CheckTx`` / ``Reap`` / ``Update``):

* :meth:`Mempool.add` admits a tx: dedup by hash first (cheapest), then the
  stateless checks (size, encoding, chain id, signature, blob binding), the
  per-sender nonce window, the stateful pre-check, and the capacity limits.
  Every refusal is a typed :class:`~ledger.errors.LedgerError` with a stable
  ``code``, counted in ``medledger_txs_rejected_total{reason=code}``.
* :meth:`Mempool.reap` picks a block's worth in a deterministic order (arrival
  order across senders, nonce order within a sender, never past a gap).
* :meth:`Mempool.update` runs after each commit: it drops the committed txs,
  wakes clients waiting in :meth:`Mempool.wait_committed`, and rechecks what
  remains against the new state within a time and count budget, resuming
  where it stopped at the next block, so a big pool never stalls a commit.

Gossip: locally submitted txs go through a bounded outbox; :meth:`run_gossip`
groups them into :class:`TxBatch` messages by size and by age and hands each
batch to the network, awaiting it (backpressure all the way back to
:meth:`submit`). Batches from peers go through :meth:`add_batch`, the same
admission (the signature cache makes a re-check of our own txs cheap).

Every structure is bounded: the pool by count and bytes, each sender by the
nonce window, the waiters, the outbox and the recheck queue.

Only the Trio thread of the node touches a mempool; it is not thread-safe.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ledger import codec
from ledger.apply import ApplyContext, check_tx_against_state
from ledger.blob import MAX_BLOB_SIZE, check_blob_for_tx
from ledger.codec import Record
from ledger.errors import (
    BadSignatureError,
    LedgerError,
    NonceGapError,
    NonceReplayError,
    StateRuleError,
)
from ledger.state import StateView
from ledger.tx import Tx, tx_hash
from ledger.validate import check_tx_bytes
from node.metrics import NodeMetrics, NoopMetrics
from storage.api import StateReader

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

    from node.config import Config

log = logging.getLogger(__name__)

# --- errors ----------------------------------------------------------------------


class MempoolFullError(LedgerError):
    """The pool is at its count or byte limit; the client should retry later (HTTP 503)."""

    code = "MEMPOOL_FULL"


class AlreadyKnownError(LedgerError):
    """This exact tx is already pending: an idempotent answer, not a failure.

    ``tx_hash`` lets the API answer with the hash as for a fresh admission.
    """

    code = "ALREADY_KNOWN"

    def __init__(self, txh: bytes) -> None:
        super().__init__(f"tx {txh.hex()[:16]} is already pending")
        self.tx_hash = txh


class NoncePendingError(StateRuleError):
    """Another tx of the same sender with the same nonce is already pending."""

    code = "NONCE_PENDING"


class ExpiredError(LedgerError):
    """A pending tx that stayed unincludable for too many blocks (e.g. behind a gap)."""

    code = "EXPIRED"


class BusyError(LedgerError):
    """Too many clients already wait for commits; retry later (HTTP 503)."""

    code = "BUSY"


# --- what the mempool asks of the ledger ------------------------------------------------


class TxChecker(Protocol):
    """The ledger checks the mempool runs, bound to the latest committed state.

    ``check_stateless`` raises the decode/stateless error family, ``check_stateful``
    a :class:`~ledger.errors.StateRuleError` (it must ignore the nonce, which the
    mempool orders itself: a tx a few nonces ahead is admissible).
    """

    def check_stateless(self, tx_bytes: bytes, blob: bytes | None) -> tuple[Tx, bytes]:
        """Decode and check ``tx_bytes`` (and its blob) alone; return ``(tx, tx_hash)``."""
        ...

    def next_nonce(self, sender: bytes) -> int:
        """The nonce the committed state expects next from ``sender`` (0 if unknown)."""
        ...

    def check_stateful(self, tx: Tx) -> None:
        """The rule pre-check against committed state, nonce excluded."""
        ...


# --- wire format of a gossiped batch -------------------------------------------------


class BatchItem(Record, frozen=True):
    tx: bytes
    blob: bytes | None


class TxBatch(Record, frozen=True):
    """One gossip message: many txs with their sidecar blobs."""

    items: list[BatchItem]


def encode_batch(items: Sequence[tuple[bytes, bytes | None]]) -> bytes:
    return codec.encode(TxBatch([BatchItem(tx, blob) for tx, blob in items]))


def decode_batch(data: bytes, max_size: int) -> TxBatch:
    """Raises the :class:`~ledger.errors.DecodeError` family for a bad batch."""
    return codec.decode(data, TxBatch, max_size=max_size)


_ITEM_OVERHEAD = 12  # msgpack array header + two bin headers, upper bound


def _item_size(tx: bytes, blob: bytes | None) -> int:
    return len(tx) + (len(blob) if blob is not None else 0) + _ITEM_OVERHEAD


# --- settings, results, statistics -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class MempoolSettings:
    """Limits and budgets; the node maps its ``[mempool]`` / ``[p2p]`` config onto these."""

    max_txs: int = 50_000
    max_bytes: int = 256 * 1024 * 1024  # tx bytes
    max_blob_bytes: int = 512 * 1024 * 1024  # sidecar blob bytes held beside them
    max_nonces_ahead: int = 64  # accept next_nonce .. next_nonce + this, per sender
    recheck_budget_s: float = 0.1
    recheck_budget_txs: int = 20_000
    #: ... and at most this many per tx the block committed (but ``recheck_min``):
    #: recheck work then grows with the commit rate, not with the backlog.
    recheck_per_committed: int = 1
    recheck_min: int = 256
    ttl_blocks: int = 600  # evict what stayed unincludable this many blocks
    max_waiters: int = 10_000
    recent_commits: int = 50_000  # hashes remembered after commit, for late waiters
    outbox_size: int = 4096  # locally submitted txs queued for gossip
    gossip_batch_bytes: int = 64 * 1024
    gossip_batch_interval_s: float = 0.02
    max_batch_message_bytes: int = 1024 * 1024  # largest batch accepted from a peer

    @classmethod
    def from_config(cls, config: Config) -> MempoolSettings:
        """The ``[mempool]`` limits and the ``[p2p]`` gossip batching of a node config."""
        return cls(
            max_txs=config.mempool.max_txs,
            max_bytes=config.mempool.max_bytes,
            recheck_budget_s=config.mempool.recheck_budget_s,
            gossip_batch_bytes=config.p2p.gossip_batch_bytes,
            gossip_batch_interval_s=config.p2p.gossip_batch_interval_s,
        )

    def __post_init__(self) -> None:
        for name in (
            "max_txs",
            "max_bytes",
            "max_blob_bytes",
            "max_waiters",
            "outbox_size",
            "gossip_batch_bytes",
            "max_batch_message_bytes",
            "ttl_blocks",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"mempool.{name}: must be positive")
        budgets = (self.max_nonces_ahead, self.recheck_budget_txs, self.recheck_per_committed)
        if min(*budgets, self.recheck_min) < 0:
            raise ValueError("mempool: negative budget")


def gossip_interval_for(configured_s: float, validators: int) -> float:
    """The batch interval for ``validators``: ``configured_s`` x max(1, n (n - 1) / 12).

    Every batch a node publishes is delivered to n - 1 peers, and py-libp2p's
    CPU cost is per delivered message (decrypt, parse, verify its signature),
    not per byte (LIBP2P_NOTES.md). With a fixed interval and a trickle of
    txs per node (batches of one tx), the network-wide delivery rate grew as
    n (n - 1) / interval: at 10 validators and 100 tx/s it was the largest
    cost on the machine and blocks took seconds. Scaled so, the delivery rate
    at a trickle stays what 4 validators (the configured case, unchanged)
    cause, at the price of latency at low load: 175 ms at 7 validators, 375 ms
    at 10, 1 s at 16 with the default 50 ms. Under load a batch fills
    (``gossip_batch_bytes``) and leaves at once, whatever the interval.
    """
    return configured_s * max(1.0, validators * (validators - 1) / 12)


@dataclass(frozen=True, slots=True)
class PendingTx:
    """A pending tx as :meth:`Mempool.reap` hands it to the proposer."""

    tx: Tx
    hash: bytes
    data: bytes
    blob: bytes | None


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a tx was committed: what :meth:`Mempool.wait_committed` returns."""

    height: int
    index: int


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    accepted: int
    duplicates: int
    rejected: int


@dataclass(frozen=True, slots=True)
class MempoolStatistics:
    """A snapshot for gauges and ``/v1/status``."""

    txs: int
    tx_bytes: int
    blob_bytes: int
    senders: int
    waiters: int
    outbox_queued: int
    recheck_queued: int
    height: int
    accepted_total: int
    rejected_total: int
    evicted_total: int
    gossip_batches_total: int


@dataclass(slots=True)
class _Entry:
    pending: PendingTx
    seq: int
    height: int  # height at admission, for the TTL
    admitted_at: float
    size: int = field(init=False)
    blob_size: int = field(init=False)
    announced_at: float = field(init=False)  # last time we gossiped it (or admitted it)
    reannounced: int = 0  # times re-gossiped: each doubles the wait before the next

    def __post_init__(self) -> None:
        self.announced_at = self.admitted_at
        self.size = len(self.pending.data)
        self.blob_size = len(self.pending.blob) if self.pending.blob is not None else 0


class _Waiter:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: Committed | None = None
        self.error: LedgerError | None = None


Source = str  # "local" (API), "gossip" (peer batch): a metrics label


class Mempool:
    """Pending transactions of one node. See the module docstring."""

    def __init__(
        self,
        checker: TxChecker,
        settings: MempoolSettings | None = None,
        *,
        metrics: NodeMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
        height: int = 0,
    ) -> None:
        self._checker = checker
        self.settings = settings or MempoolSettings()
        self._metrics = metrics if metrics is not None else NoopMetrics()
        self._clock = clock  # monotonic; only for budgets and latency metrics
        self._height = height
        self._by_hash: dict[bytes, _Entry] = {}  # insertion order == arrival order
        self._senders: dict[bytes, dict[int, _Entry]] = {}  # sender -> nonce -> entry
        self._includable: bool | None = None  # has_includable(), until the pool or state moves
        self._bytes = 0
        self._blob_bytes = 0
        self._seq = 0
        self._recheck: deque[bytes] = deque()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._recent: OrderedDict[bytes, Committed] = OrderedDict()
        self._n_waiters = 0
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[tuple[bytes, bytes | None]](
            self.settings.outbox_size
        )
        # Items too large for a gossip message (a record with a blob over ~1 MiB)
        # go to every validator over a direct stream instead (node.txpush).
        self._direct_send, self.direct_outbox = trio.open_memory_channel[
            tuple[bytes, bytes | None]
        ](LARGE_OUTBOX_SIZE)
        self._accepted_total = 0
        self._rejected_total = 0
        self._evicted_total = 0
        self._batches_total = 0
        self._accepted_by_source: dict[Source, Any] = {}  # labelled counters, looked up once
        self._rejected_by_code: dict[str, Any] = {}

    # -- admission ---------------------------------------------------------------

    def add(self, tx_bytes: bytes, blob: bytes | None = None, *, source: Source = "local") -> bytes:
        """Admit one tx without gossiping it; return its hash.

        Raises :class:`AlreadyKnownError` for a tx already pending, and a typed
        :class:`~ledger.errors.LedgerError` for every refusal.
        """
        txh = self._add(tx_bytes, blob, source)
        self._update_gauges()
        return txh

    def _add(self, tx_bytes: bytes, blob: bytes | None, source: Source) -> bytes:
        """:meth:`add` without the gauges: batch callers set them once per batch."""
        try:
            txh = self._admit(tx_bytes, blob)
        except AlreadyKnownError:
            self._rejected_counter(AlreadyKnownError.code).inc()
            raise
        except LedgerError as exc:
            self._rejected_total += 1
            self._rejected_counter(exc.code).inc()
            if isinstance(exc, BadSignatureError):
                self._metrics.invalid_signatures.labels("tx").inc()
            raise
        self._accepted_total += 1
        counter = self._accepted_by_source.get(source)
        if counter is None:
            counter = self._accepted_by_source[source] = self._metrics.txs_accepted.labels(source)
        counter.inc()
        return txh

    def _rejected_counter(self, code: str) -> Any:
        """The labelled counter for ``code``, looked up once: duplicates and late
        copies of committed txs are refused by the thousand under re-announcement."""
        counter = self._rejected_by_code.get(code)
        if counter is None:
            counter = self._rejected_by_code[code] = self._metrics.txs_rejected.labels(code)
        return counter

    def _admit(self, tx_bytes: bytes, blob: bytes | None) -> bytes:
        txh = tx_hash(tx_bytes)  # dedup before any costly check
        if txh in self._by_hash:
            raise AlreadyKnownError(txh)
        done = self._recent.get(txh)
        if done is not None:
            # Under load a block often reaches a node before the gossip of its txs:
            # the late copy would cost a decode and every check only to fail on
            # its nonce. The same refusal, without the work.
            raise NonceReplayError(f"tx committed at height {done.height}")
        if len(self._by_hash) >= self.settings.max_txs:  # full: spend no verification
            raise MempoolFullError(f"mempool holds {len(self._by_hash)} txs")
        tx, checked_hash = self._checker.check_stateless(tx_bytes, blob)
        assert checked_hash == txh, "checker hashed different bytes"
        self._check_nonce(tx)
        pending_nonces = self._senders.get(tx.sender)
        if pending_nonces is not None and tx.nonce in pending_nonces:
            raise NoncePendingError(f"nonce {tx.nonce} of this sender is already pending")
        self._checker.check_stateful(tx)
        entry = _Entry(PendingTx(tx, txh, tx_bytes, blob), self._seq, self._height, self._clock())
        s = self.settings
        if (
            len(self._by_hash) >= s.max_txs
            or self._bytes + entry.size > s.max_bytes
            or self._blob_bytes + entry.blob_size > s.max_blob_bytes
        ):
            raise MempoolFullError(
                f"mempool holds {len(self._by_hash)} txs / {self._bytes} bytes "
                f"/ {self._blob_bytes} blob bytes"
            )
        self._seq += 1
        self._by_hash[txh] = entry
        self._senders.setdefault(tx.sender, {})[tx.nonce] = entry
        self._includable = None
        self._bytes += entry.size
        self._blob_bytes += entry.blob_size
        self._recheck.append(txh)
        self._compact_recheck()
        return txh

    def _check_nonce(self, tx: Tx) -> None:
        expected = self._checker.next_nonce(tx.sender)
        if tx.nonce < expected:
            raise NonceReplayError(f"nonce {tx.nonce} already used (next is {expected})")
        if tx.nonce > expected + self.settings.max_nonces_ahead:
            raise NonceGapError(
                f"nonce {tx.nonce} is more than {self.settings.max_nonces_ahead} "
                f"ahead of {expected}"
            )

    async def submit(self, tx_bytes: bytes, blob: bytes | None = None) -> bytes:
        """Admit a client's tx and queue it for gossip; return its hash.

        Waits while the gossip outbox is full: the network's backpressure
        reaches the client here instead of a queue growing or a tx being lost.
        """
        txh = self.add(tx_bytes, blob, source="local")
        await self._queue_gossip(tx_bytes, blob)
        return txh

    async def submit_many(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> list[bytes | LedgerError]:
        """:meth:`submit` for a batch: one result (hash or error) per item, in order."""
        results: list[bytes | LedgerError] = []
        try:
            for n, (tx_bytes, blob) in enumerate(items):
                if n % 64 == 63:
                    self._update_gauges()
                    await trio.lowlevel.checkpoint()  # signature checks: let others run
                try:
                    results.append(self._add(tx_bytes, blob, "local"))
                except LedgerError as exc:
                    results.append(exc)
                    continue
                await self._queue_gossip(tx_bytes, blob)
        finally:
            self._update_gauges()
        return results

    async def _queue_gossip(self, tx_bytes: bytes, blob: bytes | None) -> None:
        outbox = self._outbox_send
        if _item_size(tx_bytes, blob) + _ITEM_OVERHEAD > self.settings.max_batch_message_bytes:
            # libp2p drops pubsub messages over 1 MiB silently: such an item
            # is pushed to each validator on a direct stream (node.txpush).
            outbox = self._direct_send
        queued = False
        try:
            await outbox.send((tx_bytes, blob))
            queued = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._metrics.messages_dropped.labels("outbox_closed").inc()
            queued = True  # counted here; the tx stays pending, unannounced (shutdown)
        finally:
            if not queued:  # cancelled: the tx stays pending, unannounced
                self._metrics.messages_dropped.labels("outbox_cancelled").inc()

    async def add_batch(
        self, data: bytes, *, source: Source = "gossip", max_bytes: int | None = None
    ) -> BatchOutcome:
        """Admit every tx of a gossiped (or pushed) batch; never re-gossips them.

        A batch that does not decode raises the :class:`~ledger.errors.DecodeError`
        family (the peer's fault); single bad txs are only counted. ``max_bytes``
        overrides the gossip limit for batches that came on a direct stream.
        """
        batch = decode_batch(data, max_bytes or self.settings.max_batch_message_bytes)
        accepted = duplicates = rejected = 0
        try:
            for n, item in enumerate(batch.items):
                if n % 64 == 63:
                    self._update_gauges()
                    await trio.lowlevel.checkpoint()
                try:
                    self._add(item.tx, item.blob, source)
                    accepted += 1
                except AlreadyKnownError:
                    duplicates += 1
                except LedgerError:
                    rejected += 1
        finally:
            self._update_gauges()
        return BatchOutcome(accepted, duplicates, rejected)

    # -- queries -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, txh: bytes) -> bool:
        return txh in self._by_hash

    def get(self, txh: bytes) -> PendingTx | None:
        entry = self._by_hash.get(txh)
        return entry.pending if entry is not None else None

    def next_nonce(self, sender: bytes, committed_next: int) -> int:
        """The nonce a client should sign next: past every contiguous pending tx of ``sender``."""
        by_nonce = self._senders.get(sender, {})
        nonce = committed_next
        while nonce in by_nonce:
            nonce += 1
        return nonce

    def has_includable(self) -> bool:
        """Whether a proposal could include something: some sender's next nonce is here.

        Txs parked behind a missing nonce are not work a primary can be blamed
        for not proposing: counting them (``len(self) > 0``) made every
        replica time out and change view again and again, forever, after one
        client request was lost before the txs that follow it. Cached until
        the pool or the committed state changes (each miss reads the state).
        """
        if self._includable is None:
            self._includable = any(
                self._checker.next_nonce(sender) in by_nonce
                for sender, by_nonce in self._senders.items()
            )
        return self._includable

    def statistics(self) -> MempoolStatistics:
        return MempoolStatistics(
            txs=len(self._by_hash),
            tx_bytes=self._bytes,
            blob_bytes=self._blob_bytes,
            senders=len(self._senders),
            waiters=self._n_waiters,
            outbox_queued=self._outbox_send.statistics().current_buffer_used,
            recheck_queued=len(self._recheck),
            height=self._height,
            accepted_total=self._accepted_total,
            rejected_total=self._rejected_total,
            evicted_total=self._evicted_total,
            gossip_batches_total=self._batches_total,
        )

    # -- reap ----------------------------------------------------------------------

    def reap(
        self, max_txs: int, max_bytes: int, *, skip: Collection[bytes] = ()
    ) -> list[PendingTx]:
        """Up to ``max_txs`` txs of at most ``max_bytes`` in total, for a proposal.

        Each sender's txs come in nonce order starting at the nonce the state
        expects, stopping at the first missing nonce; senders interleave by
        arrival order. ``skip`` holds hashes already in proposed but not yet
        committed blocks: they are passed over as if included, so a sender's
        sequence continues after them. Nothing is removed (see :meth:`update`).
        """
        out: list[PendingTx] = []
        if max_txs <= 0:
            return out
        heap: list[tuple[int, bytes, int]] = []  # (arrival seq, sender, nonce)
        for sender, by_nonce in self._senders.items():
            entry = self._next_includable(by_nonce, self._checker.next_nonce(sender), skip)
            if entry is not None:
                heap.append((entry.seq, sender, entry.pending.tx.nonce))
        heapq.heapify(heap)
        total = 0
        while heap and len(out) < max_txs:
            _, sender, nonce = heapq.heappop(heap)
            by_nonce = self._senders[sender]
            entry = by_nonce[nonce]
            if total + entry.size > max_bytes:
                continue  # this sender is done; smaller txs of others may still fit
            out.append(entry.pending)
            total += entry.size
            nxt = self._next_includable(by_nonce, nonce + 1, skip)
            if nxt is not None:
                heapq.heappush(heap, (nxt.seq, sender, nxt.pending.tx.nonce))
        return out

    @staticmethod
    def _next_includable(
        by_nonce: dict[int, _Entry], nonce: int, skip: Collection[bytes]
    ) -> _Entry | None:
        while True:
            entry = by_nonce.get(nonce)
            if entry is None:
                return None
            if entry.pending.hash not in skip:
                return entry
            nonce += 1

    # -- update after a commit -----------------------------------------------------------

    def update(
        self,
        height: int,
        committed: Sequence[bytes],
        checker: TxChecker | None = None,
    ) -> None:
        """Drop the txs committed at ``height`` and recheck the rest within budget.

        ``committed`` is the block's tx hashes in block order (so waiters learn
        their index); ``checker``, when given, replaces the current one and must
        see the state after ``height``.
        """
        if checker is not None:
            self._checker = checker
        self._height = height
        self._includable = None
        now = self._clock()
        for index, txh in enumerate(committed):
            entry = self._by_hash.get(txh)
            if entry is not None:
                self._remove(entry)
                self._metrics.commit_latency.observe(max(0.0, now - entry.admitted_at))
            where = Committed(height, index)
            self._remember(txh, where)
            self._wake(txh, result=where)
        self._recheck_some(len(committed))
        self._update_gauges()

    def _remember(self, txh: bytes, where: Committed) -> None:
        self._recent[txh] = where
        if len(self._recent) > self.settings.recent_commits:
            self._recent.popitem(last=False)

    def recently_committed(self, txh: bytes) -> Committed | None:
        """Where ``txh`` committed, if it was among the last ``recent_commits`` commits."""
        return self._recent.get(txh)

    def _recheck_some(self, committed: int) -> None:
        """Recheck the oldest-checked pending txs, within the budgets; the rest wait a turn.

        Under a backlog, rechecking every pending tx after every block held
        the event loop for up to ``recheck_budget_s`` per commit (this runs on
        the Trio thread), nearly all of it confirming txs that were still
        valid; bounding it by the block's size raised the saturated commit
        rate by about 60 % (BENCHMARKS.md). Every pending tx is still
        rechecked in turn. Apply remains the arbiter: a tx that became invalid
        and is included before its turn fails there with its code.
        """
        s = self.settings
        deadline = self._clock() + s.recheck_budget_s
        per_block = max(s.recheck_min, s.recheck_per_committed * committed)
        todo = min(len(self._recheck), s.recheck_budget_txs, per_block)
        for n in range(todo):
            if n and self._clock() >= deadline:
                break
            txh = self._recheck.popleft()
            entry = self._by_hash.get(txh)
            if entry is None:
                continue  # committed or evicted since it was queued
            try:
                if self._height - entry.height > s.ttl_blocks:
                    raise ExpiredError(f"pending since height {entry.height}")
                self._check_nonce(entry.pending.tx)
                self._checker.check_stateful(entry.pending.tx)
            except LedgerError as exc:
                self._evict(entry, exc)
            else:
                self._recheck.append(txh)

    def _evict(self, entry: _Entry, exc: LedgerError) -> None:
        self._remove(entry)
        self._evicted_total += 1
        self._metrics.mempool_evicted.labels(exc.code).inc()
        log.debug("evicted tx %s: %s", entry.pending.hash.hex()[:16], exc.code)
        self._wake(entry.pending.hash, error=exc)

    def _remove(self, entry: _Entry) -> None:
        pending = entry.pending
        del self._by_hash[pending.hash]
        by_nonce = self._senders[pending.tx.sender]
        del by_nonce[pending.tx.nonce]
        if not by_nonce:
            del self._senders[pending.tx.sender]
        self._includable = None
        self._bytes -= entry.size
        self._blob_bytes -= entry.blob_size

    def _compact_recheck(self) -> None:
        """Keep the recheck queue bounded: stale hashes are dropped lazily, so rebuild."""
        if len(self._recheck) > 2 * self.settings.max_txs + 64:
            self._recheck = deque(self._by_hash)

    def _update_gauges(self) -> None:
        self._metrics.mempool_txs.set(len(self._by_hash))
        self._metrics.mempool_bytes.set(self._bytes)
        self._metrics.mempool_blob_bytes.set(self._blob_bytes)

    # -- waiters ------------------------------------------------------------------------

    async def wait_committed(self, txh: bytes) -> Committed:
        """Block until ``txh`` commits; raise the error that evicted it instead.

        Returns at once for a tx among the recent commits (see
        :meth:`recently_committed`); older commits are the block store's business.

        Bound the wait with a cancel scope (``trio.move_on_after``); the waiter
        is removed when cancelled. Raises :class:`BusyError` when too many
        clients already wait.
        """
        done = self._recent.get(txh)
        if done is not None:  # committed before the client started waiting
            return done
        if self._n_waiters >= self.settings.max_waiters:
            raise BusyError(f"{self._n_waiters} clients already wait for commits")
        waiter = _Waiter()
        self._waiters.setdefault(txh, []).append(waiter)
        self._n_waiters += 1
        try:
            await waiter.event.wait()
        finally:
            if not waiter.event.is_set():  # cancelled: unregister
                waiters = self._waiters.get(txh)
                if waiters is not None:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[txh]
                self._n_waiters -= 1
        if waiter.error is not None:
            raise waiter.error
        assert waiter.result is not None
        return waiter.result

    def _wake(
        self, txh: bytes, *, result: Committed | None = None, error: LedgerError | None = None
    ) -> None:
        waiters = self._waiters.pop(txh, None)
        if not waiters:
            return
        for waiter in waiters:
            waiter.result = result
            waiter.error = error
            waiter.event.set()
        self._n_waiters -= len(waiters)

    # -- gossip ---------------------------------------------------------------------------

    async def run_gossip(
        self,
        publish: Callable[[bytes], Awaitable[object]],
        *,
        task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Group outbox txs into :class:`TxBatch` messages and ``await publish(batch)``.

        A batch closes when it would pass ``gossip_batch_bytes`` or when its
        first tx has waited ``gossip_batch_interval_s`` (Trio's clock, so tests
        use ``MockClock``). A single tx bigger than a batch travels alone.
        ``publish`` is awaited: while the network is slow, the outbox fills
        and :meth:`submit` waits. Returns when :meth:`close_outbox` was called
        and the outbox is drained.
        """
        s = self.settings
        carry: tuple[bytes, bytes | None] | None = None
        task_status.started()
        async with self._outbox_recv:
            while True:
                if carry is None:
                    try:
                        carry = await self._outbox_recv.receive()
                    except trio.EndOfChannel:
                        return
                items = [carry]
                carry = None
                size = _item_size(*items[0])
                closed = False
                with trio.move_on_at(trio.current_time() + s.gossip_batch_interval_s):
                    while size < s.gossip_batch_bytes:
                        try:
                            item = await self._outbox_recv.receive()
                        except trio.EndOfChannel:
                            closed = True
                            break
                        item_size = _item_size(*item)
                        if size + item_size > s.gossip_batch_bytes:
                            carry = item
                            break
                        items.append(item)
                        size += item_size
                data = encode_batch(items)
                await publish(data)
                self._batches_total += 1
                self._metrics.gossip_batches.inc()
                self._metrics.gossip_batch_bytes.observe(len(data))
                if closed:
                    return

    def reannounce_stale(self, after_s: float, limit: int) -> int:
        """Gossip again up to ``limit`` pending txs not announced for a while; oldest first.

        Gossip is origin-only (:mod:`node.p2p`): a tx reaches the validators
        its origin is connected to when it is submitted, and nobody relays it.
        A tx still pending long after that may have missed one (a link that
        was down, a peer not yet in the gossip mesh after a restart); so every
        node that holds it, not only its origin, announces it once more, and a
        broken link between the origin and the primary is bridged by the
        others. Receivers that have it drop the copy on a hash lookup.

        A tx is due ``after_s`` after its last announcement, and each further
        re-announcement doubles that wait (``after_s``, 2x, 4x ... capped at
        :data:`REANNOUNCE_MAX_DOUBLINGS` doublings). Without the backoff a
        network that was merely slow (commit latency above ``after_s``, every
        pending tx "stale") had each of its n nodes re-send its whole backlog
        to n - 1 peers every ``after_s``: at 10 validators that load, not the
        clients', kept it slow. Bounded by ``limit`` per call and by the
        outbox's free room (never waits). Returns how many were queued.
        """
        if limit <= 0:
            return 0
        now = self._clock()
        cutoff = now - after_s
        queued = 0
        for entry in self._by_hash.values():  # arrival order
            if entry.admitted_at > cutoff:
                break  # announced_at >= admitted_at: nothing younger qualifies
            wait = after_s * (1 << min(entry.reannounced, REANNOUNCE_MAX_DOUBLINGS))
            if now - entry.announced_at < wait:
                continue
            pending = entry.pending
            if _item_size(pending.data, pending.blob) + _ITEM_OVERHEAD > (
                self.settings.max_batch_message_bytes
            ):
                continue  # pushed directly to each validator (node.txpush), not gossiped
            try:
                self._outbox_send.send_nowait((pending.data, pending.blob))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                break
            entry.announced_at = now
            entry.reannounced += 1
            queued += 1
            if queued >= limit:
                break
        if queued:
            self._metrics.gossip_reannounced.inc(queued)
        return queued

    def close_outbox(self) -> None:
        """Stop accepting gossip; :meth:`run_gossip` flushes what is queued and returns."""
        self._outbox_send.close()
        self._direct_send.close()


#: Re-announcements of one tx wait after_s, 2x, 4x ... up to 2**this x after_s apart.
REANNOUNCE_MAX_DOUBLINGS = 5

#: Oversized items waiting for their direct push before ``submit`` waits (backpressure).
LARGE_OUTBOX_SIZE = 16


# --- the real ledger behind TxChecker ---------------------------------------------------


class _StateReadCache:
    """Memoised reads of the committed state, for the checks of one height.

    Admission and the recheck after every commit read the same few senders'
    identities for every tx (a hospital signs thousands of registrations);
    remembering the raw value spares the store lookup and checksum each time.
    A checker is rebuilt after every commit, so a cache never outlives its height.
    """

    def __init__(self, state: StateReader, capacity: int = 4096) -> None:
        self._state = state
        self._capacity = capacity
        self._values: dict[bytes, bytes | None] = {}

    def get_state(self, key: bytes) -> bytes | None:
        try:
            return self._values[key]
        except KeyError:
            pass
        value = self._state.get_state(key)
        if len(self._values) >= self._capacity:
            self._values.clear()  # bounded; the hot keys come back at once
        self._values[key] = value
        return value

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._state.scan_state(prefix)

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        return self._state.get_tree_node(node_id)


class LedgerTxChecker:
    """:class:`TxChecker` over the ledger's own checks, bound to one committed state.

    Stateless: :func:`ledger.validate.check_tx_bytes` (with the node's
    signature cache, so a tx is verified once per node) and
    :func:`ledger.blob.check_blob_for_tx`. Stateful:
    :func:`ledger.apply.check_tx_against_state` as if in the next block at
    ``time_ms`` (the last committed block's time), with the tx's own nonce as
    the expected one: the mempool has already placed the nonce in its window.
    Build a new one after each commit and hand it to :meth:`Mempool.update`:
    its state reads are remembered for its lifetime.
    """

    def __init__(
        self,
        state: StateReader,
        ctx: ApplyContext,
        *,
        time_ms: int,
        max_blob_bytes: int = MAX_BLOB_SIZE,
    ) -> None:
        self._state = _StateReadCache(state)
        self._ctx = ctx
        self._time_ms = time_ms
        self._max_blob_bytes = max_blob_bytes

    def check_stateless(self, tx_bytes: bytes, blob: bytes | None) -> tuple[Tx, bytes]:
        ctx = self._ctx
        tx, txh = check_tx_bytes(tx_bytes, ctx.chain_id, ctx.limits, ctx.sig_cache)
        check_blob_for_tx(tx, blob, max_size=self._max_blob_bytes)
        return tx, txh

    def next_nonce(self, sender: bytes) -> int:
        identity = StateView(self._state).identity(sender)
        return identity.nonce if identity is not None else 0

    def check_stateful(self, tx: Tx) -> None:
        check_tx_against_state(self._state, tx, self._time_ms, self._ctx, expected_nonce=tx.nonce)
