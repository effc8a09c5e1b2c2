"""The blob fetch on a running node: the Trio driver and the committed-state rules.

:class:`BlobFetchService` drives :class:`~node.clinical.blobfetch.BlobFetcher`
over the transport's ``/medledger/blob/1`` request streams and answers the
same protocol for peers through :class:`~node.clinical.blobfetch.BlobServer`.

What it fetches: every blob the committed, unerased state references
(``RecordMeta.blob_hashes()``) that the store lacks. Three sources tell it:

* a commit whose blob never arrived (``CommitInfo.missing_blobs``, after
  :class:`~node.clinical.blobs.BlobRecovery` placed what gossip brought);
* the scan of the whole state when the service starts (a restart, a state
  transfer, a lost file), and again if the wanted set ever overflowed;
* a read that found no blob (:meth:`BlobFetchService.want_record`): the
  client gets 503 ``BLOB_UNAVAILABLE`` and retries while the fetch runs.

A fetched blob is stored only if the committed state still references exactly
that hash and its record is not erased, checked again after the write: an
erasure that commits meanwhile deletes it again, so a fetch can never
resurrect a crypto-shredded record. What it serves: the same rule
(:func:`servable_blob`), to validators only, rate-limited per peer.

Lifetime: ``await nursery.start(service.run)``; it registers its request
handler, reports started, scans, then fetches until cancelled. Store writes,
the scan and the lookups that serve peers run in worker threads (LevelDB
fsync, a full state scan and reading plus encoding a blob of up to 4 MiB must
not stall the event loop that consensus shares); the serving rate limit,
which reads the Trio clock, and everything else run on the Trio thread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ledger import codec
from ledger.blob import decode_blob
from ledger.errors import LedgerError
from ledger.state import BUCKET_BYTES, P_RECORD, RecordMeta, StateView, strip_value
from ledger.tx import AnchorRecord, KeyRelease
from node.clinical.blobfetch import (
    BlobFetcher,
    BlobServer,
    FetchRequest,
    FetchSettings,
    ServeSettings,
    ServeTicket,
)
from node.clinical.reads import ReadStore
from node.metrics import CounterLike, NodeMetrics
from node.p2p import BLOB_PROTOCOL, PeerUnavailableError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

    from node.ledger_app import CommitInfo

__all__ = [
    "BlobFetchService",
    "FetchStore",
    "RequestTransport",
    "committed_blob_ref",
    "place_blob",
    "scan_missing_blobs",
    "servable_blob",
]

log = logging.getLogger(__name__)

#: While anything is wanted, poll at least this often (a peer may have connected).
IDLE_POLL_S = 1.0
#: Worker threads that look blobs up for peers at once; more requests wait their
#: turn (each is already admitted by the per-peer rate limit). Two: the machine
#: class has two cores, and LevelDB reads release the GIL.
SERVE_THREADS = 2


class FetchStore(ReadStore, Protocol):
    """The node's store as the blob fetch uses it (a :class:`storage.store.Store`)."""

    def has_blob(self, blob_hash: bytes) -> bool: ...

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None: ...

    def delete_blobs(self, blob_hashes: Iterable[bytes]) -> None: ...

    def compact_blobs(self) -> None: ...


class RequestTransport(Protocol):
    """The part of :class:`node.p2p.Transport` request/response services need
    (blob fetch, and :mod:`node.txpush`)."""

    def connected_peers(self) -> list[bytes]: ...

    def set_request_handler(
        self, handler: Callable[[bytes, bytes], Awaitable[bytes]], *, protocol: Any = ...
    ) -> None: ...

    async def request(
        self, public_key: bytes, data: bytes, *, timeout: float = ..., protocol: Any = ...
    ) -> bytes: ...


# --- committed-state rules -----------------------------------------------------------


def committed_blob_ref(store: ReadStore, record_id: bytes, blob_hash: bytes) -> bool:
    """Does the committed state reference ``blob_hash`` from the unerased ``record_id``?"""
    record = StateView(store).record(record_id)
    return record is not None and record.erased_at is None and blob_hash in record.blob_hashes()


def servable_blob(store: ReadStore, blob_hash: bytes) -> bytes | None:
    """The blob's bytes if this node holds it and committed state references it, unerased.

    A blob held for a pending tx, or for a record erased since, is not served.
    A stored blob that fails its checksum or does not decode is not served
    either (logged: that is our disk's fault, not the asker's).
    """
    try:
        raw = store.get_blob(blob_hash)
        if raw is None:
            return None
        record_id = decode_blob(raw).record_id
        return raw if committed_blob_ref(store, record_id, blob_hash) else None
    except LedgerError as exc:
        log.warning("not serving blob %s: %s", blob_hash.hex()[:16], exc.code)
        return None


def _records(store: ReadStore) -> Iterator[tuple[bytes, RecordMeta]]:
    """Every committed record (id, meta), by one pass over the state namespace."""
    for stored_key, stored in store.scan_state(b""):
        logical = stored_key[BUCKET_BYTES:]
        if logical[:1] != P_RECORD:
            continue
        try:
            raw = strip_value(stored, logical)
            assert raw is not None
            yield logical[1:], codec.decode(raw, RecordMeta)
        except LedgerError as exc:
            log.warning("blob scan skips a record entry: %s", exc.code)


def scan_missing_blobs(store: FetchStore, limit: int) -> tuple[list[tuple[bytes, bytes]], bool]:
    """(blob hash, record id) of referenced blobs the store lacks, and whether that is all.

    At most ``limit`` are returned; the flag is False when more were left out.
    Cost: one pass over the state (run it in a worker thread).
    """
    out: list[tuple[bytes, bytes]] = []
    for record_id, record in _records(store):
        if record.erased_at is not None:
            continue
        for blob_hash in record.blob_hashes():
            if store.has_blob(blob_hash):
                continue
            if len(out) >= limit:
                return out, False
            out.append((blob_hash, record_id))
    return out, True


def place_blob(store: FetchStore, blob_hash: bytes, record_id: bytes, blob: bytes) -> bool:
    """Store a verified blob if its record still references it; True if it is now held.

    Checked again after the write: an erasure committed in between (by the
    commit thread) is undone here, and LevelDB compacted so no copy stays.
    """
    if store.has_blob(blob_hash):
        return True
    if not committed_blob_ref(store, record_id, blob_hash):
        return False
    store.put_blobs([(blob_hash, blob)])
    if committed_blob_ref(store, record_id, blob_hash):
        return True
    store.delete_blobs([blob_hash])
    store.compact_blobs()
    return False


# --- the service ---------------------------------------------------------------------


class BlobFetchService:
    """Fetch missing blobs from peers and serve ours (see the module docstring)."""

    def __init__(
        self,
        store: FetchStore,
        transport: RequestTransport,
        validators: Iterable[bytes],
        *,
        metrics: NodeMetrics,
        settings: FetchSettings | None = None,
        serve: ServeSettings | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._store = store
        self._transport = transport
        self._metrics = metrics
        self._clock = clock
        self.fetcher = BlobFetcher(settings)
        self.server = BlobServer(validators, self._lookup, clock, serve)
        self._serve_threads = trio.CapacityLimiter(SERVE_THREADS)
        self._wake = trio.Event()
        self._seen: dict[str, int] = {}
        #: Blobs placed in the store by this service since start.
        self.placed = 0

    # -- inputs (Trio thread) -----------------------------------------------------

    def want(self, blob_hash: bytes, record_id: bytes) -> None:
        if self.fetcher.want(blob_hash, record_id, self._clock()):
            self._wake.set()

    def on_commit(self, info: CommitInfo) -> None:
        """After a commit: forget erased blobs, fetch referenced ones that did not arrive."""
        for blob_hash in info.result.blob_deletes:
            self.fetcher.cancel(blob_hash)
        missing = {bh for bh in info.missing_blobs if not self._store.has_blob(bh)}
        if not missing:
            return
        for tx in info.block.txs:
            body = tx.body
            if isinstance(body, AnchorRecord):
                blob_hash = body.blob_hash
            elif isinstance(body, KeyRelease):
                blob_hash = body.wrap_blob_hash
            else:
                continue
            if blob_hash in missing and committed_blob_ref(self._store, body.record_id, blob_hash):
                self.want(blob_hash, body.record_id)

    def want_record(self, record_id: bytes) -> None:
        """A read found a blob of ``record_id`` missing: fetch whatever it lacks."""
        record = StateView(self._store).record(record_id)
        if record is None or record.erased_at is not None:
            return
        for blob_hash in record.blob_hashes():
            if not self._store.has_blob(blob_hash):
                self.want(blob_hash, record_id)

    # -- running ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers, scan for missing blobs, then fetch until cancelled."""
        self._transport.set_request_handler(self._serve, protocol=BLOB_PROTOCOL)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await self._rescan()
            while True:
                if self.fetcher.overflowed and not len(self.fetcher):
                    self.fetcher.overflowed = False
                    await self._rescan()
                now = self._clock()
                for req in self.fetcher.poll(now, self._transport.connected_peers()):
                    nursery.start_soon(self._fetch, req)
                self._sync_metrics()
                await self._wait(now)

    async def _wait(self, now: float) -> None:
        deadline = math.inf
        if len(self.fetcher):
            deadline = now + IDLE_POLL_S
            wakeup = self.fetcher.next_wakeup()
            if wakeup is not None and wakeup > now:
                deadline = min(deadline, wakeup)
        with trio.move_on_at(deadline):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _rescan(self) -> None:
        room = self.fetcher.settings.max_missing - len(self.fetcher)
        found, complete = await trio.to_thread.run_sync(scan_missing_blobs, self._store, room)
        for blob_hash, record_id in found:
            self.want(blob_hash, record_id)
        if not complete:
            self.fetcher.overflowed = True
        if found:
            log.info("fetching %d missing blob(s) of committed records from peers", len(found))

    async def _fetch(self, req: FetchRequest) -> None:
        try:
            if self._store.has_blob(req.blob_hash):  # arrived by gossip meanwhile
                self.fetcher.abandon(req)
                return
            try:
                answer = await self._transport.request(
                    req.peer,
                    req.payload,
                    timeout=self.fetcher.settings.request_timeout_s,
                    protocol=BLOB_PROTOCOL,
                )
            except PeerUnavailableError:
                self.fetcher.on_failure(req, self._clock())
                return
            outcome = self.fetcher.on_response(req, answer, self._clock())
            if outcome.blob is None:
                if outcome.result is not None:
                    log.debug(
                        "blob %s from %s: %s",
                        req.blob_hash.hex()[:16],
                        req.peer.hex()[:16],
                        outcome.result,
                    )
                return
            placed = await trio.to_thread.run_sync(
                place_blob, self._store, req.blob_hash, req.record_id, outcome.blob
            )
            if placed:
                self.placed += 1
                log.info(
                    "fetched blob %s from peer %s", req.blob_hash.hex()[:16], req.peer.hex()[:16]
                )
        finally:
            self._wake.set()

    # -- serving ------------------------------------------------------------------

    def _lookup(self, blob_hash: bytes) -> bytes | None:
        return servable_blob(self._store, blob_hash)

    async def _serve(self, peer: bytes, request: bytes) -> bytes:
        """Admit on the Trio thread (rate limit on the Trio clock), look up in a worker."""
        admitted = self.server.admit(peer, request)
        if isinstance(admitted, ServeTicket):
            admitted = await trio.to_thread.run_sync(
                self.server.serve, admitted, limiter=self._serve_threads
            )
        self._sync_metrics()
        return admitted

    # -- metrics ------------------------------------------------------------------

    def _sync_metrics(self) -> None:
        """Carry the cores' plain counters into Prometheus (each a true counter)."""
        f = self.fetcher.statistics()
        s = self.server.statistics()
        m = self._metrics
        m.blob_fetch_missing.set(f.missing)
        for result, value in (
            ("ok", f.ok),
            ("invalid", f.invalid),
            ("not_found", f.not_found),
            ("rate_limited", f.rate_limited),
            ("unavailable", f.unavailable),
            ("gave_up", f.gave_up),
            ("overflow", f.overflow),
        ):
            self._advance(m.blob_fetch.labels(result), "fetch_" + result, value)
        for result, value in (
            ("sent", s.sent),
            ("not_found", s.not_found),
            ("rate_limited", s.rate_limited),
            ("refused", s.refused),
            ("malformed", s.malformed),
        ):
            self._advance(m.blob_requests_served.labels(result), "serve_" + result, value)

    def _advance(self, counter: CounterLike, name: str, value: int) -> None:
        delta = value - self._seen.get(name, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[name] = value
