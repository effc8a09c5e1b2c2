"""What the rest of the node hands to storage, and what it can ask back.

Storage is agnostic of ledger and consensus types: blocks, certificates and
results arrive as their canonical bytes (encoded by ``ledger.codec``) and are
returned as bytes. The only structure storage knows is :class:`CommitBundle`,
everything one committed height changes, written in ONE atomic batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CommitBundle:
    """Everything that committing one height writes, atomically."""

    height: int
    block_hash: bytes
    block_bytes: bytes  # canonical encoding of ledger.block.Block
    certificate: bytes  # canonical encoding of the consensus commit certificate
    tx_hashes: Sequence[bytes]  # in block order; indexed tx hash -> (height, index)
    results: bytes  # canonical encoding of the per-tx results (ledger-defined)
    state_writes: Sequence[tuple[bytes, bytes | None]]  # state key -> value; None deletes
    tree_writes: Sequence[tuple[bytes, bytes]]  # state-tree node id -> node hash
    state_root: bytes  # root after this height
    blob_puts: Sequence[tuple[bytes, bytes]] = ()  # blob hash -> blob bytes
    blob_deletes: Sequence[bytes] = ()  # erased blob hashes (crypto-shredding)


class StateReader(Protocol):
    """The read side of the committed state, as the ledger needs it."""

    def get_state(self, key: bytes) -> bytes | None: ...

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        ...

    def get_tree_node(self, node_id: bytes) -> bytes | None: ...
