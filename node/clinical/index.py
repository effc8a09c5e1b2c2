"""Per-patient listings that the ledger state does not keep: records and consents.

The state is keyed for the rules (a record by id, a grant by patient *and*
grantee), so "every record of patient P" or "every consent P ever gave" is
not one scan there. This node-local index answers both. It is derived data:
built from the committed blocks (:meth:`PatientIndex.catch_up`) and extended
after each commit, never written to the store, and rebuilt on restart, so it
can never disagree with the chain it was read from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ledger import codec
from ledger.block import Block
from ledger.results import OK, decode_results
from ledger.tx import AnchorRecord, GrantConsent, Tx


class BlockSource(Protocol):
    """What the index reads: committed blocks and their result codes."""

    def latest_height(self) -> int | None: ...

    def get_block_bytes(self, height: int) -> bytes | None: ...

    def get_results(self, height: int) -> bytes | None: ...


def committed_txs(store: BlockSource, height: int) -> Iterator[tuple[int, Tx, str]]:
    """``(index, tx, result code)`` of every tx of the committed block ``height``."""
    raw = store.get_block_bytes(height)
    raw_results = store.get_results(height)
    if raw is None or raw_results is None:
        return
    block = codec.decode(raw, Block)
    results = decode_results(raw_results)
    for i, (tx, res) in enumerate(zip(block.txs, results, strict=True)):
        yield i, tx, res.code


class PatientIndex:
    """Record ids and consent ids per patient, in commit order."""

    def __init__(self) -> None:
        self.height = 0  # last height folded in
        self._records: dict[bytes, list[bytes]] = {}
        self._consents: dict[bytes, list[bytes]] = {}

    def records_of(self, patient: bytes) -> list[bytes]:
        return list(self._records.get(patient, ()))

    def consents_of(self, patient: bytes) -> list[bytes]:
        return list(self._consents.get(patient, ()))

    def add_height(self, store: BlockSource, height: int) -> None:
        """Fold in block ``height`` (must be ``self.height + 1``)."""
        if height != self.height + 1:
            raise ValueError(f"index is at {self.height}, cannot add height {height}")
        for _i, tx, code in committed_txs(store, height):
            self.fold(tx, code)
        self.height = height

    def fold(self, tx: Tx, code: str) -> None:
        """Add one committed tx (with its result code) to the listings."""
        if code != OK:
            return
        body = tx.body
        if isinstance(body, AnchorRecord):
            self._records.setdefault(body.patient, []).append(body.record_id)
        elif isinstance(body, GrantConsent):  # only a patient may grant: the sender
            self._consents.setdefault(tx.sender, []).append(body.consent_id)

    def catch_up(self, store: BlockSource, upto: int | None = None) -> int:
        """Fold in every committed height up to ``upto`` (default: the latest)."""
        top = store.latest_height() or 0
        if upto is not None:
            top = min(top, upto)
        while self.height < top:
            self.add_height(store, self.height + 1)
        return self.height
