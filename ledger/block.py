"""Blocks: the unit PBFT agrees on and the ledger executes.

The header commits to the ordered txs through ``tx_root`` (RFC 6962 Merkle
root of tx hashes) and to the executed state through ``state_root``. Because
PBFT pipelines ``window`` heights, the proposer of height ``h`` knows the
state only up to ``h - window``; ``state_root`` is therefore the state root
after executing block ``h - window`` (the genesis state root when that is
below 1). A block's commit certificate thus also certifies that older state.

The header carries neither view nor round: a block prepared in one view keeps
its hash when a new primary re-proposes it after a view change.
"""

from __future__ import annotations

from ledger import codec
from ledger.codec import Record
from ledger.hashing import H_BLOCK, tagged_hash
from ledger.tx import Tx


class BlockHeader(Record, frozen=True):
    chain_id: str
    height: int
    time_ms: int  # proposer's clock, bounded by validators; the only time apply sees
    parent_hash: bytes
    tx_count: int  # certified, so an inclusion proof's tree size cannot be misstated
    tx_root: bytes
    state_root: bytes  # state after block ``height - window``
    proposer: bytes

    def hash(self) -> bytes:
        return tagged_hash(H_BLOCK, codec.encode(self))


class Block(Record, frozen=True):
    header: BlockHeader
    txs: list[Tx]

    def hash(self) -> bytes:
        return self.header.hash()

    @property
    def height(self) -> int:
        return self.header.height
