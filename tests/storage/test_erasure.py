"""Crypto-shredding at rest: after erasure and compaction no byte of the blob remains."""

from __future__ import annotations

import dataclasses

from storage.scan import find_in_files, find_marker
from tests.storage.conftest import Backend
from tests.storage.helpers import h32, make_bundle

MARKER = b"PLAINTEXT-MARKER-6a1f0e"


def marked_blob(tag: str) -> tuple[bytes, bytes]:
    return h32("marked", tag), h32("pad", tag) * 8 + MARKER + h32("tail", tag) * 8


def test_erased_blobs_leave_no_copy(backend: Backend) -> None:
    leveldb_dir = backend.path if backend.name == "leveldb" else None
    store = backend.open()
    pending_hash, pending = marked_blob("pending")
    committed_hash, committed = marked_blob("committed")
    store.put_blobs([(pending_hash, pending)])
    store.commit(make_bundle(0, blobs=0))
    with_blobs = make_bundle(1, blobs=2)
    store.commit(
        dataclasses.replace(
            with_blobs, blob_puts=[*with_blobs.blob_puts, (committed_hash, committed)]
        )
    )
    # Positive control: the scan does find the marker while the blobs exist.
    assert len(find_marker(store.kv, MARKER)) == 2
    if leveldb_dir is not None:
        assert find_in_files(leveldb_dir, MARKER)

    store.commit(make_bundle(2, blobs=0, blob_deletes=(pending_hash, committed_hash)))
    assert store.get_blob(pending_hash) is None and store.get_blob(committed_hash) is None
    assert find_marker(store.kv, MARKER) == []
    if leveldb_dir is not None:
        # A LevelDB delete only hides the value: the files still hold it ...
        assert find_in_files(leveldb_dir, MARKER)
    store.compact_blobs()
    # ... until the blob namespace is compacted.
    assert find_marker(store.kv, MARKER, leveldb_dir=leveldb_dir) == []

    # Everything else survived the compaction, and a restart finds no copy either.
    assert store.get_blob(with_blobs.blob_puts[1][0]) == with_blobs.blob_puts[1][1]
    store = backend.open()
    assert store.verify().last_height == 2
    assert find_marker(store.kv, MARKER, leveldb_dir=leveldb_dir) == []


def test_erasure_after_the_blob_reached_deep_tables(backend: Backend) -> None:
    """The blob was flushed and compacted into tables long before it is erased."""
    leveldb_dir = backend.path if backend.name == "leveldb" else None
    store = backend.open()
    marked_hash, marked = marked_blob("old")
    store.put_blobs([(marked_hash, marked)])
    store.compact_blobs()  # pushes the blob into the deepest table of its range
    for h in range(0, 40):
        store.commit(make_bundle(h, txs=20, blobs=4, blob_size=2048))
        if h % 10 == 9:
            store.compact_blobs()
    if leveldb_dir is not None:
        assert find_in_files(leveldb_dir, MARKER)
    store.commit(make_bundle(40, blobs=0, blob_deletes=(marked_hash,)))
    store.compact_blobs()
    assert find_marker(store.kv, MARKER, leveldb_dir=leveldb_dir) == []
    assert store.verify().last_height == 40
    assert store.get_blob(make_bundle(39, blobs=4).blob_puts[3][0]) is not None
