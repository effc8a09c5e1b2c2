"""Sidecar blobs that arrive too late: keep them, and place them once their tx commits.

A record's blob travels with its tx in gossip batches, but the tx also
reaches other validators inside the primary's block, on faster direct
streams. A replica can therefore commit an ``AnchorRecord`` (or a
``KeyRelease``) before the gossip batch that carries its blob arrives; the
mempool then drops the late item as already committed, and the node would
hold the chain entry without the ciphertext, unable to serve the read
(``BLOB_UNAVAILABLE``).

:class:`BlobRecovery` closes that gap without touching consensus: it
remembers the blobs of recent gossip batches in a bounded cache and, when a
commit reports blobs this node lacks (``CommitInfo.missing_blobs``) or a
blob arrives for a tx already committed, stores it, but only if the
committed state still references exactly that hash and the record is not
erased: a late blob can never resurrect a crypto-shredded record. What
gossip never brings (a lost batch, a blob too large to gossip, a restart)
is fetched from peers by :mod:`node.clinical.blobfetch_service`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from ledger import codec
from ledger.blob import blob_hash
from ledger.errors import LedgerError
from ledger.state import StateView
from ledger.tx import AnchorRecord, KeyRelease, Tx, tx_hash
from node.clinical.reads import ReadStore
from node.mempool import decode_batch

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024


class BlobStore(ReadStore, Protocol):
    def has_blob(self, blob_hash: bytes) -> bool: ...

    def put_blobs(self, blobs: Iterable[tuple[bytes, bytes]]) -> None: ...

    def delete_blobs(self, blob_hashes: Iterable[bytes]) -> None: ...


class BlobRecovery:
    """Bounded cache of gossiped blobs (hash -> (tx bytes, blob)), placed after commit."""

    def __init__(
        self, store: BlobStore, *, max_batch_bytes: int, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self._store = store
        self._max_batch = max_batch_bytes
        self._cap = cache_bytes
        self._bytes = 0
        self._cache: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self.recovered = 0

    def observe_batch(self, data: bytes) -> None:
        """Remember the blobs of a gossip batch; place those whose tx already committed."""
        try:
            batch = decode_batch(data, self._max_batch)
        except LedgerError:
            return  # the mempool refuses and counts it
        for item in batch.items:
            if item.blob is None:
                continue
            bh = blob_hash(item.blob)
            if bh in self._cache or self._store.has_blob(bh):
                continue
            if self._store.tx_location(tx_hash(item.tx)) is not None:
                self._place(bh, item.tx, item.blob)
                continue
            self._remember(bh, item.tx, item.blob)

    def after_commit(self, missing: Iterable[bytes]) -> None:
        """Place every blob a commit lacked that an earlier batch brought."""
        for bh in missing:
            held = self._cache.pop(bh, None)
            if held is None:
                continue
            self._bytes -= len(held[0]) + len(held[1])
            self._place(bh, *held)

    def _remember(self, bh: bytes, tx: bytes, blob: bytes) -> None:
        size = len(tx) + len(blob)
        if size > self._cap:
            return
        self._cache[bh] = (tx, blob)
        self._bytes += size
        while self._bytes > self._cap:
            _, (t, b) = self._cache.popitem(last=False)
            self._bytes -= len(t) + len(b)

    def _referenced(self, bh: bytes, tx_bytes: bytes) -> bool:
        """Does the committed, unerased state reference ``bh`` through this tx's record?"""
        try:
            tx = codec.decode(tx_bytes, Tx)
        except LedgerError:
            return False
        body = tx.body
        if not isinstance(body, AnchorRecord | KeyRelease):
            return False
        record = StateView(self._store).record(body.record_id)
        if record is None or record.erased_at is not None:
            return False
        if isinstance(body, AnchorRecord):
            return record.blob_hash == bh == body.blob_hash
        return any(r.wrap_blob_hash == bh == body.wrap_blob_hash for r in record.readers)

    def _place(self, bh: bytes, tx_bytes: bytes, blob: bytes) -> None:
        if self._store.has_blob(bh) or not self._referenced(bh, tx_bytes):
            return
        self._store.put_blobs([(bh, blob)])
        if not self._referenced(bh, tx_bytes):  # an erasure committed meanwhile
            self._store.delete_blobs([bh])
            return
        self.recovered += 1
        log.info("stored late blob %s", bh.hex()[:16])
