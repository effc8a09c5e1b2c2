"""Building the node-side clinical parts from a node's parts (one call from ``node.app``).

Kept here so that ``node/app.py`` needs only a few lines: the facade
delegates the signed reads to :attr:`ClinicalParts.reads`, the node starts
:attr:`ClinicalParts.key_release` in its nursery and calls
:meth:`ClinicalParts.on_commit` after each commit; gossip batches also go
through :attr:`ClinicalParts.blobs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.clinical.blobs import BlobRecovery
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

    def on_commit(self, info: CommitInfo) -> None:
        """After each executed height (Trio thread): place late blobs, wake the key release."""
        self.blobs.after_commit(info.missing_blobs)
        codes = [r.code for r in info.result.results]
        self.key_release.notify(info.height, list(zip(info.block.txs, codes, strict=True)))


def build_clinical(parts: NodeParts, *, clock_ms: Callable[[], int]) -> ClinicalParts:
    """The index, the read handlers and the key-release service of one node."""
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
    return ClinicalParts(index, reads, service, blobs)
