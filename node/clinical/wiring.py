"""Building the node-side clinical parts from a node's parts (one call from ``node.app``).

Kept here so that ``node/app.py`` needs only a few lines: the facade
delegates the signed record reads to :meth:`ClinicalParts.read_record` and the
audit reads to :attr:`ClinicalParts.reads`, the node starts
:attr:`ClinicalParts.key_release` and :attr:`ClinicalParts.blob_fetch` in its
nursery and calls :meth:`ClinicalParts.on_commit` after each commit; gossip
batches also go through :attr:`ClinicalParts.blobs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from node.clinical.blobfetch import FetchSettings, ServeSettings, max_blob_for_frame
from node.clinical.blobfetch_service import BlobFetchService
from node.clinical.blobs import BlobRecovery
from node.clinical.errors import BlobUnavailableError
from node.clinical.index import PatientIndex
from node.clinical.keyrelease import KeyReleaseService
from node.clinical.reads import ClinicalReads

if TYPE_CHECKING:
    from consensus.service import ConsensusService
    from node.app import NodeParts
    from node.ledger_app import CommitInfo
    from node.mempool import Mempool


class MempoolSubmitter:
    """:class:`~node.clinical.keyrelease.Submitter` over this node's mempool."""

    def __init__(self, mempool: Mempool, service: ConsensusService) -> None:
        self._mempool = mempool
        self._service = service

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        txh = await self._mempool.submit(tx, blob)
        self._service.notify_pending()
        return txh

    def next_nonce(self, sender: bytes, committed_next: int) -> int:
        return self._mempool.next_nonce(sender, committed_next)

    def is_pending(self, tx_hash: bytes) -> bool:
        return tx_hash in self._mempool


@dataclass(frozen=True, slots=True)
class ClinicalParts:
    index: PatientIndex
    reads: ClinicalReads
    key_release: KeyReleaseService
    blobs: BlobRecovery
    blob_fetch: BlobFetchService

    def on_commit(self, info: CommitInfo) -> None:
        """After each executed height (Trio thread): place late blobs, fetch the blobs still
        missing from peers, wake the key release."""
        self.blobs.after_commit(info.missing_blobs)
        self.blob_fetch.on_commit(info)
        codes = [r.code for r in info.result.results]
        self.key_release.notify(info.height, list(zip(info.block.txs, codes, strict=True)))

    async def read_record(
        self,
        record_id: bytes,
        reader: bytes,
        access_tx: bytes | None,
        *,
        limiter: trio.CapacityLimiter | None = None,
    ) -> object:
        """A signed record read; a missing blob (503, the client retries) starts its fetch.

        The read (state, the access tx's block, a blob of up to 4 MiB) runs in
        a worker thread (``limiter``, else Trio's default); the fetch is
        started back on the Trio thread, which owns the blob fetcher.
        """
        try:
            return await trio.to_thread.run_sync(
                self.reads.read_record, record_id, reader, access_tx, limiter=limiter
            )
        except BlobUnavailableError:
            self.blob_fetch.want_record(record_id)
            raise


def build_clinical(parts: NodeParts, *, clock_ms: Callable[[], int]) -> ClinicalParts:
    """The index, the read handlers, the key-release and blob-fetch services of one node."""
    index = PatientIndex()
    policy = parts.genesis.policy.break_glass()
    reads = ClinicalReads(parts.store, policy, index, clock_ms=clock_ms)
    service = KeyReleaseService(
        parts.store,
        index,
        parts.key,
        parts.genesis.chain_id,
        policy,
        MempoolSubmitter(parts.mempool, parts.service),
    )
    blobs = BlobRecovery(
        parts.store, max_batch_bytes=parts.mempool.settings.max_batch_message_bytes
    )
    max_blob = max_blob_for_frame(parts.config.p2p.max_message_bytes)
    blob_fetch = BlobFetchService(
        parts.store,
        parts.transport,
        parts.genesis.validators,
        metrics=parts.metrics,
        settings=FetchSettings(max_blob_bytes=max_blob),
        serve=ServeSettings(max_blob_bytes=max_blob),
    )
    return ClinicalParts(index, reads, service, blobs, blob_fetch)
