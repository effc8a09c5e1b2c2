"""What executing a block produces: per-tx results and the state delta.

:class:`TxResult` is encoded (as a list, canonically) into the ``results``
bytes that storage keeps beside each block, so a client can ask for a tx's
outcome. :class:`ApplyResult` carries everything ``CommitBundle`` needs from
the ledger; :meth:`ApplyResult.bundle` adds what only the caller knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ledger import codec
from ledger.codec import Record
from storage.api import CommitBundle

if TYPE_CHECKING:
    from ledger.state import AuditEntry
    from ledger.state_tree import StateTree

OK = "OK"


class TxResult(Record, frozen=True):
    """Outcome of one tx: ``"OK"`` or the code of the error that refused it."""

    code: str


def encode_results(results: Sequence[TxResult]) -> bytes:
    return codec.encode(list(results))


def decode_results(data: bytes) -> list[TxResult]:
    return codec.decode(data, list[TxResult])


@dataclass(frozen=True, slots=True)
class ApplyResult:
    height: int
    tx_hashes: list[bytes]
    results: list[TxResult]
    results_bytes: bytes
    state_writes: list[tuple[bytes, bytes | None]]  # stored key -> value, sorted by key
    tree_writes: list[tuple[bytes, bytes]]  # node id -> hash, sorted by id
    state_root: bytes
    blob_deletes: list[bytes] = field(default_factory=list)  # shredded blob hashes
    audit_entries: list[AuditEntry] = field(default_factory=list)
    tree: StateTree | None = None  # the in-memory tree after this block, if one was given

    def bundle(
        self, *, block_hash: bytes, block_bytes: bytes, certificate: bytes,
        blob_puts: Sequence[tuple[bytes, bytes]] = (),
    ) -> CommitBundle:
        """The storage commit of this height."""
        return CommitBundle(
            height=self.height,
            block_hash=block_hash,
            block_bytes=block_bytes,
            certificate=certificate,
            tx_hashes=self.tx_hashes,
            results=self.results_bytes,
            state_writes=self.state_writes,
            tree_writes=self.tree_writes,
            state_root=self.state_root,
            blob_puts=blob_puts,
            blob_deletes=self.blob_deletes,
        )
