"""Late blobs: placed once their tx is committed, never for an erased record."""

from __future__ import annotations

import os

from ledger.blob import canonical_readers, seal_record
from ledger.tx import AnchorRecord, EraseRecord, Tx
from node.clinical.blobs import BlobRecovery
from node.mempool import encode_batch
from tests.clinical.helpers import World

PLAIN = b'{"resourceType":"Observation"}'


def _anchor_tx(world: World) -> tuple[Tx, bytes, bytes]:
    rid = os.urandom(16)
    readers = canonical_readers([world.p.public_key, world.a.public_key])
    blob, bh, _ = seal_record(PLAIN, rid, readers)
    body = AnchorRecord(rid, world.p.public_key, "vital-signs", world.a.public_key, bh, readers)
    return world.chain.tx(world.d1, body), blob, bh


def test_blob_arriving_after_commit_is_placed() -> None:
    world = World()
    rec = BlobRecovery(world.chain.store, max_batch_bytes=1 << 24)
    tx, blob, bh = _anchor_tx(world)
    world.chain.commit([(tx, None)])  # committed without its blob
    assert not world.chain.store.has_blob(bh)
    rec.observe_batch(encode_batch([(tx.encode(), blob)]))
    assert world.chain.store.get_blob(bh) == blob
    assert rec.recovered == 1


def test_blob_seen_before_commit_is_placed_after_it() -> None:
    world = World()
    rec = BlobRecovery(world.chain.store, max_batch_bytes=1 << 24)
    tx, blob, bh = _anchor_tx(world)
    rec.observe_batch(encode_batch([(tx.encode(), blob)]))  # e.g. the mempool refused it
    assert not world.chain.store.has_blob(bh)
    world.chain.commit([(tx, None)])
    rec.after_commit([bh])
    assert world.chain.store.get_blob(bh) == blob


def test_erased_or_unreferenced_blobs_are_never_stored() -> None:
    world = World()
    rec = BlobRecovery(world.chain.store, max_batch_bytes=1 << 24)
    tx, blob, bh = _anchor_tx(world)
    world.chain.commit([(tx, None)])
    assert isinstance(tx.body, AnchorRecord)
    world.chain.run(world.p, EraseRecord(tx.body.record_id))
    rec.observe_batch(encode_batch([(tx.encode(), blob)]))
    assert not world.chain.store.has_blob(bh)
    other, other_blob, other_bh = _anchor_tx(world)  # never committed
    rec.observe_batch(encode_batch([(other.encode(), other_blob)]))
    rec.after_commit([b"\x00" * 32])
    assert not world.chain.store.has_blob(other_bh)
    rec.observe_batch(b"not a batch")  # refused quietly (the mempool counts it)
    assert rec.recovered == 0
