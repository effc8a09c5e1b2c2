"""Store behaviour, run identically on LevelDB and on the in-memory twin."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ledger.errors import CorruptionError, InvalidBundleError, StoreVersionError
from storage import schema
from storage.api import CommitBundle, StateReader
from storage.checksum import seal
from storage.schema import Meta, Namespace
from storage.store import Store
from tests.storage.conftest import Backend
from tests.storage.helpers import (
    blob_hash,
    block_hash,
    h32,
    height_state_key,
    make_bundle,
    tx_hash,
)


def dump(store: Store) -> list[tuple[bytes, bytes]]:
    return list(store.kv.iterate(b"", None))


def commit_range(store: Store, start: int, stop: int, **kw: Any) -> None:
    for h in range(start, stop):
        store.commit(make_bundle(h, **kw))


def test_empty_store(store: Store) -> None:
    assert store.latest_height() is None
    assert store.base_height() is None
    assert store.state_root() is None
    assert store.get_block_bytes(0) is None
    assert store.get_meta(Meta.SCHEMA_VERSION) == schema.encode_height(schema.SCHEMA_VERSION)
    report = store.verify()
    assert report.last_height is None and report.keys == 1


def test_commit_then_read_everything(store: Store) -> None:
    commit_range(store, 0, 3, txs=4, blobs=2)
    b = make_bundle(2, txs=4, blobs=2)
    assert store.latest_height() == 2 and store.base_height() == 0
    assert store.state_root() == b.state_root
    assert store.state_root_at(1) == make_bundle(1).state_root
    assert store.state_root_at(3) is None
    assert store.get_block_bytes(2) == b.block_bytes
    assert store.get_block_hash(2) == block_hash(2)
    assert store.height_of(block_hash(1)) == 1
    assert store.height_of(h32("no such block")) is None
    assert store.get_certificate(2) == b.certificate
    assert store.get_results(2) == b.results
    assert store.tx_location(tx_hash(1, 3)) == (1, 3)
    assert store.tx_location(tx_hash(9, 0)) is None
    assert store.get_blob(blob_hash(2, 1)) == b.blob_puts[1][1]
    assert store.has_blob(blob_hash(0, 0))
    assert not store.has_blob(blob_hash(7, 0))
    assert store.get_state(b"last") == (2).to_bytes(8, "big")
    assert store.get_tree_node(b"node/" + (1).to_bytes(8, "big")) == h32("node", 1)
    assert [h for h, _ in store.iter_blocks(1)] == [1, 2]
    assert [h for h, _ in store.iter_blocks(0, 2)] == [0, 1]
    assert store.get_block_bytes(-1) is None
    assert store.get_block_bytes(3) is None
    report = store.verify()
    assert (report.base_height, report.last_height) == (0, 2)
    assert dict(report.per_namespace)["tx_location"] == 12


def test_state_scan_and_delete(store: Store) -> None:
    store.commit(make_bundle(0, extra_state=((b"p/b", b"2"), (b"p/a", b"1"), (b"q", b"3"))))
    assert list(store.scan_state(b"p/")) == [(b"p/a", b"1"), (b"p/b", b"2")]
    store.commit(make_bundle(1, extra_state=((b"p/a", None),)))
    assert list(store.scan_state(b"p/")) == [(b"p/b", b"2")]
    assert store.get_state(b"p/a") is None
    assert [k for k, _ in store.scan_state(b"height/")] == [
        height_state_key(0),
        height_state_key(1),
    ]


def test_store_is_a_state_reader(store: Store) -> None:
    reader: StateReader = store  # also checked by mypy
    store.commit(make_bundle(0))
    assert reader.get_state(b"last") == bytes(8)


def test_first_commit_may_start_above_zero(store: Store) -> None:
    store.commit(make_bundle(5))
    assert (store.base_height(), store.latest_height()) == (5, 5)
    store.commit(make_bundle(6))
    assert store.verify().base_height == 5


def test_reopen_keeps_everything(backend: Backend) -> None:
    store = backend.open()
    commit_range(store, 0, 4)
    store.put_meta(Meta.STABLE_CHECKPOINT, b"\x00" * 7 + b"\x02")
    before = dump(store)
    store = backend.open()
    assert dump(store) == before
    assert store.latest_height() == 3 and store.base_height() == 0
    assert store.state_root() == make_bundle(3).state_root
    assert store.get_meta(Meta.STABLE_CHECKPOINT) == b"\x00" * 7 + b"\x02"
    store.commit(make_bundle(4))
    assert store.verify().last_height == 4


def test_both_backends_hold_identical_bytes(tmp_path: Any) -> None:
    dumps = []
    for name in ("memory", "leveldb"):
        b = Backend(name, tmp_path / name)
        store = b.open()
        commit_range(store, 0, 5, txs=5, blobs=2)
        store.commit(make_bundle(5, blob_deletes=(blob_hash(1, 0),)))
        dumps.append(dump(store))
        b.close()
    assert dumps[0] == dumps[1]


BAD_BUNDLES: dict[str, dict[str, Any]] = {
    "skipped height": {"height": 3},
    "repeated height": {"height": 1},
    "negative height": {"height": -1},
    "bool height": {"height": True},
    "short block hash": {"block_hash": b"\x01" * 31},
    "known block hash": {"block_hash": block_hash(0)},
    "str block": {"block_bytes": "block"},
    "short tx hash": {"tx_hashes": [b"\x01" * 32, b"\x02"]},
    "duplicate tx": {"tx_hashes": [b"\x01" * 32, b"\x01" * 32]},
    "str state key": {"state_writes": [("k", b"v")]},
    "duplicate state key": {"state_writes": [(b"k", b"v"), (b"k", None)]},
    "not a pair": {"state_writes": [(b"k", b"v", b"x")]},
    "tree delete": {"tree_writes": [(b"n", None)]},
    "blob hash size": {"blob_puts": [(b"\x01" * 33, b"x")]},
    "blob erased and stored": {"blob_puts": [(b"\x01" * 32, b"x")], "blob_deletes": [b"\x01" * 32]},
    "erased blob hash size": {"blob_deletes": [b"\x01"]},
    "state root not bytes": {"state_root": None},
}


@pytest.mark.parametrize("change", BAD_BUNDLES.values(), ids=BAD_BUNDLES.keys())
def test_invalid_bundle_writes_nothing(store: Store, change: dict[str, Any]) -> None:
    commit_range(store, 0, 2)
    before = dump(store)
    stats = store.statistics()
    bad = dataclasses.replace(make_bundle(2), **change)
    with pytest.raises(InvalidBundleError):
        store.commit(bad)
    assert dump(store) == before
    assert store.latest_height() == 1
    assert store.statistics() == stats
    store.commit(make_bundle(2))  # the store is still usable
    assert store.latest_height() == 2


def flip_stored_byte(store: Store, key: bytes, pos: int = -1) -> None:
    raw = store.kv.get(key)
    assert raw is not None
    flipped = bytearray(raw)
    flipped[pos] ^= 0x40
    store.kv.write([(key, bytes(flipped))], sync=True)


CORRUPTIBLE = {
    "block": (schema.block_key(1), lambda s: s.get_block_bytes(1)),
    "block_hash": (schema.block_hash_key(1), lambda s: s.get_block_hash(1)),
    "height_by_hash": (
        schema.height_by_hash_key(block_hash(1)),
        lambda s: s.height_of(block_hash(1)),
    ),
    "certificate": (schema.certificate_key(1), lambda s: s.get_certificate(1)),
    "results": (schema.results_key(1), lambda s: s.get_results(1)),
    "state_root": (schema.state_root_key(1), lambda s: s.state_root_at(1)),
    "tx_location": (schema.tx_location_key(tx_hash(1, 0)), lambda s: s.tx_location(tx_hash(1, 0))),
    "state": (schema.state_key(b"last"), lambda s: s.get_state(b"last")),
    "state_scan": (schema.state_key(b"last"), lambda s: list(s.scan_state(b"la"))),
    "tree": (
        schema.tree_key(b"node/" + (1).to_bytes(8, "big")),
        lambda s: s.get_tree_node(b"node/" + (1).to_bytes(8, "big")),
    ),
    "blob": (schema.blob_key(blob_hash(1, 0)), lambda s: s.get_blob(blob_hash(1, 0))),
    "meta": (schema.meta_key(Meta.STATE_ROOT), lambda s: s.get_meta(Meta.STATE_ROOT)),
    "iter_blocks": (schema.block_key(1), lambda s: list(s.iter_blocks(0))),
}


@pytest.mark.parametrize("case", CORRUPTIBLE.values(), ids=CORRUPTIBLE.keys())
@pytest.mark.parametrize("pos", [0, 2, -1], ids=["version", "crc", "payload"])
def test_flipped_byte_is_corruption_never_data(store: Store, case: Any, pos: int) -> None:
    key, read = case
    commit_range(store, 0, 3)
    assert read(store) is not None  # readable before the flip
    flip_stored_byte(store, key, pos)
    with pytest.raises(CorruptionError) as info:
        read(store)
    ns = schema.namespace_of(key)
    assert ns is not None
    assert f"{ns.label}/{key[1:].hex()[:16]}" in info.value.message
    with pytest.raises(CorruptionError):
        store.verify()


def test_corrupt_metadata_stops_reopen(backend: Backend) -> None:
    store = backend.open()
    commit_range(store, 0, 2)
    flip_stored_byte(store, schema.meta_key(Meta.LAST_HEIGHT))
    with pytest.raises(CorruptionError, match="meta/"):
        backend.open()


def test_other_schema_version_refuses_to_open(backend: Backend) -> None:
    store = backend.open()
    key = schema.meta_key(Meta.SCHEMA_VERSION)
    store.kv.write([(key, seal(key, schema.encode_height(99)))], sync=True)
    with pytest.raises(StoreVersionError):
        backend.open()


def test_data_without_schema_version_refuses_to_open(backend: Backend) -> None:
    kv = backend.open_kv()
    kv.write([(schema.state_key(b"x"), seal(schema.state_key(b"x"), b"1"))], sync=True)
    kv.close()
    with pytest.raises(StoreVersionError):
        backend.open()


def remove(store: Store, key: bytes) -> None:
    store.kv.write([(key, None)], sync=True)


def put_sealed(store: Store, key: bytes, payload: bytes) -> None:
    store.kv.write([(key, seal(key, payload))], sync=True)


BROKEN_CHAINS = {
    "missing certificate": lambda s: remove(s, schema.certificate_key(1)),
    "missing results": lambda s: remove(s, schema.results_key(0)),
    "missing state root": lambda s: remove(s, schema.state_root_key(1)),
    "missing block": lambda s: remove(s, schema.block_key(2)),
    "missing hash index": lambda s: remove(s, schema.height_by_hash_key(block_hash(2))),
    "block above last": lambda s: put_sealed(s, schema.block_key(3), b"half"),
    "tx above last": lambda s: put_sealed(
        s, schema.tx_location_key(tx_hash(3, 0)), schema.encode_location(3, 0)
    ),
    "hash index disagrees": lambda s: put_sealed(
        s, schema.height_by_hash_key(block_hash(2)), schema.encode_height(1)
    ),
    "unknown prefix": lambda s: s.kv.write([(b"\x00junk", b"x")], sync=True),
    "short height key": lambda s: put_sealed(s, Namespace.RESULTS.value + b"\x01", b"x"),
    "short root key": lambda s: put_sealed(s, Namespace.STATE_ROOT.value + b"\x01", b"x"),
    "last hash mismatch": lambda s: put_sealed(s, schema.meta_key(Meta.LAST_BLOCK_HASH), b"x" * 32),
    "no state root": lambda s: remove(s, schema.meta_key(Meta.STATE_ROOT)),
    "state root mismatch": lambda s: put_sealed(s, schema.meta_key(Meta.STATE_ROOT), b"r" * 32),
}


@pytest.mark.parametrize("breakage", BROKEN_CHAINS.values(), ids=BROKEN_CHAINS.keys())
def test_verify_finds_broken_chain(store: Store, breakage: Any) -> None:
    commit_range(store, 0, 3)
    assert store.verify().last_height == 2
    breakage(store)
    with pytest.raises(CorruptionError):
        store.verify()


def test_blobs_before_commit_and_deleted_outside_commit(store: Store) -> None:
    store.put_blobs([(h32("p1"), b"pending one"), (h32("p2"), b"pending two")])
    assert store.get_blob(h32("p1")) == b"pending one"
    store.delete_blobs([h32("p2")])
    assert not store.has_blob(h32("p2"))
    with pytest.raises(InvalidBundleError):
        store.put_blobs([(h32("p3"), b"ok"), (b"short", b"bad")])
    assert not store.has_blob(h32("p3"))  # the batch was refused whole
    assert store.verify().last_height is None


def test_erasure_in_commit_deletes_blob(store: Store) -> None:
    store.commit(make_bundle(0, blobs=2))
    store.commit(make_bundle(1, blobs=0, blob_deletes=(blob_hash(0, 1), h32("never stored"))))
    assert store.get_blob(blob_hash(0, 1)) is None
    assert store.get_blob(blob_hash(0, 0)) is not None
    assert schema.blob_key(blob_hash(0, 1)) not in dict(dump(store))
    store.compact_blobs()
    store.verify()


def test_meta(store: Store) -> None:
    assert store.get_meta(Meta.STABLE_CHECKPOINT) is None
    store.put_meta(Meta.STABLE_CHECKPOINT, b"\x01")
    store.put_meta("operator_note", b"x")
    assert store.get_meta("stable_checkpoint") == b"\x01"
    assert store.get_meta("operator_note") == b"x"
    for reserved in (Meta.LAST_HEIGHT, "state_root", Meta.SCHEMA_VERSION):
        with pytest.raises(ValueError):
            store.put_meta(reserved, b"\x00" * 8)
    with pytest.raises(ValueError):
        store.put_meta("caf\u00e9", b"x")
    store.verify()


def test_statistics(store: Store) -> None:
    s0 = store.statistics()
    store.commit(make_bundle(0, txs=2, blobs=1))
    store.commit(make_bundle(1, txs=2, blobs=0, blob_deletes=(blob_hash(0, 0),)))
    s = store.statistics()
    assert s.commits == s0.commits + 2
    assert s.write_batches == s0.write_batches + 2
    assert s.keys_deleted == 1
    # block, hash, hash index, cert, results, root, meta x3 (+ base once), 2 tx, 4 state, 1 tree
    assert s.keys_written - s0.keys_written == (9 + 2 + 4 + 1) * 2 + 1 + 1
    assert s.bytes_written > 0 and s.last_batch_seconds >= 0.0
    assert s.last_height == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.commits = 0  # type: ignore[misc]


def test_bundle_type_is_the_contract() -> None:
    b = make_bundle(0)
    assert isinstance(b, CommitBundle)
