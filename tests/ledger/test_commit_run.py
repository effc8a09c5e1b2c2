"""Executing a run of heights in one write: the same store, roots and results as one by one.

``LedgerApplication.commit_run`` applies each block over the writes of the
run's earlier blocks (a patient registered at ``h`` is anchored to at
``h + 1``, a record anchored inside the run is erased inside it) and writes
everything in one synced batch. The reference is the same blocks committed
one height at a time on another store.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import msgspec
import pytest

from ledger import codec
from ledger.apply import ApplyContext
from ledger.blob import seal_record
from ledger.block import Block, BlockHeader
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy
from ledger.keys import KeyPair
from ledger.merkle import merkle_root
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    RegisterClinician,
    RegisterPatient,
    Tx,
    make_tx,
    tx_hash,
)
from ledger.validate import SigCache
from node import ledger_app
from node.ledger_app import LedgerApplication, open_chain
from node.mempool import Mempool
from storage.store import Store, open_leveldb, open_memory

CHAIN = "run-chain"
HOSP = KeyPair.from_seed(b"h" * 32)
GENESIS = Genesis(
    CHAIN,
    0,
    [GenesisOrg(HOSP.public_key, "hospital")],
    [HOSP.public_key],
    ConsensusParams(),
    Policy(),
)
PATIENTS = [KeyPair.from_seed(bytes([0x70 + i]) * 32) for i in range(3)]
CLINICIAN = KeyPair.from_seed(b"c" * 32)


class BlobSource:
    """Stands in for the mempool: commit only asks it for the blob of a pending tx."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def get(self, txh: bytes) -> SimpleNamespace | None:
        blob = self.blobs.get(txh)
        return None if blob is None else SimpleNamespace(blob=blob)


def _script() -> tuple[list[bytes], dict[bytes, bytes]]:
    """Twelve blocks that read what the blocks just before them wrote; blobs by tx hash."""
    nonces: dict[bytes, int] = {}
    blobs: dict[bytes, bytes] = {}

    def tx(key: KeyPair, body: Body) -> Tx:
        n = nonces.get(key.public_key, 0)
        nonces[key.public_key] = n + 1
        return make_tx(key, CHAIN, n, body)

    def anchor(patient: KeyPair, record: bytes, supersedes: bytes | None = None) -> Tx:
        readers = sorted([patient.public_key, HOSP.public_key])
        blob, bhash, _ = seal_record(b"note " + record, record, readers)
        t = tx(
            HOSP,
            AnchorRecord(
                record,
                patient.public_key,
                "laboratory",
                HOSP.public_key,
                bhash,
                readers,
                supersedes,
            ),
        )
        blobs[tx_hash(codec.encode(t))] = blob
        return t

    p0, p1, p2 = PATIENTS
    good = make_tx(p2, CHAIN, 99, RegisterPatient(KeyPair.from_seed(b"y" * 32).public_key))
    forged = msgspec.structs.replace(good, signature=bytes(64))  # refused, and never cached
    bodies: list[list[Tx]] = [
        [
            tx(HOSP, RegisterPatient(p0.public_key)),
            tx(HOSP, RegisterClinician(CLINICIAN.public_key, "dr")),
        ],
        [anchor(p0, b"a" * 16), tx(HOSP, RegisterPatient(p1.public_key))],
        [anchor(p1, b"b" * 16), anchor(p0, b"c" * 16, supersedes=b"a" * 16)],
        [
            tx(
                p0,
                GrantConsent(
                    b"g" * 16, CLINICIAN.public_key, ["lab"], [], "TREAT", 0, 10**6, False
                ),
            )
        ],
        [tx(p0, EraseRecord(b"c" * 16))],  # erases a and c, both anchored in this run
        [tx(HOSP, RegisterPatient(p2.public_key)), anchor(p1, b"d" * 16)],
        [anchor(p2, b"e" * 16), tx(HOSP, RegisterPatient(p2.public_key))],  # second: refused
        [tx(p1, EraseRecord(b"b" * 16))],
        [anchor(p2, b"f" * 16)],
        [tx(p2, EraseRecord(b"f" * 16)), anchor(p1, b"h" * 16)],
        [tx(HOSP, RegisterPatient(KeyPair.from_seed(b"z" * 32).public_key)), forged],
        [anchor(p2, b"i" * 16)],
    ]
    blocks = []
    for height, txs in enumerate(bodies, start=1):
        hashes = [tx_hash(codec.encode(t)) for t in txs]
        header = BlockHeader(
            CHAIN,
            height,
            1000 * height,
            bytes(32),
            len(txs),
            merkle_root(hashes),
            bytes(32),
            HOSP.public_key,
        )
        blocks.append(codec.encode(Block(header, txs)))
    return blocks, blobs


def _app(
    store: Store, blobs: dict[bytes, bytes], sig_cache: SigCache | None = None
) -> LedgerApplication:
    open_chain(store, GENESIS)
    source = BlobSource()
    source.blobs.update(blobs)
    return LedgerApplication(
        store=store,
        genesis=GENESIS,
        key=HOSP,
        mempool=cast(Mempool, source),
        ctx=ApplyContext.from_genesis(GENESIS, sig_cache),
        clock_ms=lambda: 0,
    )


def _commit_in_runs(
    app: LedgerApplication, blocks: Sequence[bytes], sizes: Sequence[int]
) -> list[bytes]:
    roots: list[bytes] = []
    height = 1
    for size in sizes:
        items = [(h, blocks[h - 1], b"cert%d" % h) for h in range(height, height + size)]
        roots += app.commit_run(items)
        height += size
    assert height == len(blocks) + 1
    return roots


@pytest.mark.parametrize("sizes", [(12,), (5, 7), (1, 4, 2, 5), (3, 3, 3, 3)])
@pytest.mark.parametrize("threads", [False, True], ids=["inline-checks", "threaded-checks"])
def test_runs_match_one_commit_per_height(
    sizes: tuple[int, ...], threads: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a signature cache, long enough runs check signatures in worker threads first."""
    blocks, blobs = _script()
    ref_store = open_memory()
    ref = _app(ref_store, blobs)
    ref_roots = [ref.commit(h, b, b"cert%d" % h) for h, b in enumerate(blocks, start=1)]
    monkeypatch.setattr(ledger_app, "_PREVERIFY_MIN_TXS", 2)
    store = open_leveldb(tmp_path / "db")
    try:
        app = _app(store, blobs, SigCache() if threads else None)
        before = store.statistics().write_batches
        assert _commit_in_runs(app, blocks, sizes) == ref_roots
        assert store.statistics().write_batches - before == len(sizes)
        assert list(store.kv.iterate(b"", None)) == list(ref_store.kv.iterate(b"", None))
        store.verify()
        # The executed heights reach the node's hooks in order, once each.
        assert [info.height for info in app._executed] == list(range(1, len(blocks) + 1))
        assert [info.height for info in ref._executed] == list(range(1, len(blocks) + 1))
        assert (app._verifier is not None) == (threads and max(sizes) > 1)
        codes = [r.code for info in app._executed for r in info.result.results]
        assert codes.count("BAD_SIGNATURE") == 1 and codes.count("OK") >= 15
    finally:
        store.close()


def test_a_block_that_fails_in_a_run_writes_nothing_of_the_run() -> None:
    blocks, blobs = _script()
    store = open_memory()
    app = _app(store, blobs)
    app.commit_run([(1, blocks[0], b"c1"), (2, blocks[1], b"c2")])
    with pytest.raises(Exception, match="does not decode"):
        app.commit_run([(3, blocks[2], b"c3"), (4, b"not a block", b"c4")])
    assert store.latest_height() == 2
    assert store.get_block_bytes(3) is None
    # The application is still where the store is: the rest commits normally.
    _ = app.commit_run([(h, blocks[h - 1], b"c") for h in range(3, len(blocks) + 1)])
    assert store.latest_height() == len(blocks)
    store.verify()
