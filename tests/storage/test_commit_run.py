"""Runs of heights in one write batch: the same bytes as one commit per height, one sync.

Run on both backends (``store`` / ``backend`` fixtures). The crash side (a
SIGKILL inside a run leaves whole runs) is in ``test_crash.py``.
"""

from __future__ import annotations

import random

import pytest

from ledger.errors import InvalidBundleError
from storage.api import CommitBundle, StateReader
from storage.store import Store, open_memory
from tests.storage.conftest import Backend
from tests.storage.helpers import blob_hash, block_hash, height_state_key, make_bundle


def _bundles(start: int, stop: int) -> list[CommitBundle]:
    """Heights that overwrite and delete each other's keys and erase each other's blobs."""
    out = []
    for h in range(start, stop):
        extra: tuple[tuple[bytes, bytes | None], ...] = (
            (b"shared/x", b"v%d" % h),
            (height_state_key(h - 1), None) if h % 3 == 0 and h > start else (b"keep", b"k"),
        )
        deletes = (blob_hash(h - 1, 0),) if h % 4 == 0 and h > start else ()
        out.append(make_bundle(h, txs=3, blobs=1, extra_state=extra, blob_deletes=deletes))
    return out


def _dump(store: Store) -> list[tuple[bytes, bytes]]:
    return list(store.kv.iterate(b"", None))


def test_a_run_writes_exactly_what_one_commit_per_height_writes() -> None:
    a, b = open_memory(), open_memory()
    bundles = _bundles(0, 23)
    for bundle in bundles:
        a.commit(bundle)
    for lo in range(0, 23, 7):  # runs of 7, 7, 7, 2
        run = b.begin_run()
        for bundle in bundles[lo : lo + 7]:
            run.add(bundle)
        run.write()
    assert _dump(a) == _dump(b)
    assert b.latest_height() == 22 and b.base_height() == 0
    assert b.state_root() == bundles[-1].state_root
    b.verify()
    sa, sb = a.statistics(), b.statistics()
    assert sb.commits == sa.commits == 23
    assert sb.write_batches == sa.write_batches - 23 + 4  # one batch (and sync) per run


def test_reads_through_a_run_see_its_earlier_heights_and_nothing_leaks_early(
    store: Store,
) -> None:
    store.commit(make_bundle(0, extra_state=((b"g/a", b"0"), (b"g/c", b"0"), (b"g/e", b"0"))))
    run = store.begin_run()
    reader: StateReader = run
    run.add(make_bundle(1, extra_state=((b"g/b", b"1"), (b"g/c", None), (b"g/f", b"1"))))
    run.add(make_bundle(2, blobs=1, extra_state=((b"g/a", b"2"), (b"g/d", b"2"))))
    assert reader.get_state(b"g/a") == b"2"
    assert reader.get_state(b"g/c") is None  # deleted in the run
    assert reader.get_state(b"g/e") == b"0"  # only in the store
    merged = [
        (b"g/a", b"2"),
        (b"g/b", b"1"),
        (b"g/d", b"2"),
        (b"g/e", b"0"),
        (b"g/f", b"1"),
    ]  # the run's writes over the store's
    assert list(reader.scan_state(b"g/")) == merged
    assert reader.get_tree_node(b"node/" + (2).to_bytes(8, "big")) is not None
    assert run.has_blob(blob_hash(2, 0)) and run.has_blob(blob_hash(0, 0))
    # The store and its disk show nothing of the run before write().
    assert store.latest_height() == 0
    assert store.get_state(b"g/a") == b"0" and store.get_state(b"g/b") is None
    assert store.get_block_bytes(1) is None and store.height_of(block_hash(2)) is None
    run.write()
    assert store.latest_height() == 2
    assert list(store.scan_state(b"g/")) == merged
    store.verify()


def test_scans_through_a_run_match_a_plain_dictionary() -> None:
    """Seeded random writes and deletes over a few prefixes; every scan merges exactly."""
    rng = random.Random(7)
    store = open_memory()
    truth: dict[bytes, bytes] = {}
    keys = [b"p%d/%02d" % (p, i) for p in range(3) for i in range(40)]
    height = 0
    for _ in range(6):
        run = store.begin_run()
        for _ in range(rng.randint(1, 5)):
            writes: dict[bytes, bytes | None] = {}
            for k in rng.sample(keys, 12):
                writes[k] = None if rng.random() < 0.3 else b"v%d" % rng.randrange(1000)
            run.add(make_bundle(height, extra_state=tuple(sorted(writes.items()))))
            for k, v in writes.items():
                if v is None:
                    truth.pop(k, None)
                else:
                    truth[k] = v
            height += 1
            for p in range(3):
                prefix = b"p%d/" % p
                want = sorted((k, v) for k, v in truth.items() if k.startswith(prefix))
                assert list(run.scan_state(prefix)) == want
        run.write()


def test_a_bad_bundle_leaves_the_run_usable(store: Store) -> None:
    run = store.begin_run()
    run.add(make_bundle(0))
    with pytest.raises(InvalidBundleError, match="does not follow"):
        run.add(make_bundle(2))
    dup = make_bundle(1)
    with pytest.raises(InvalidBundleError, match="already stored"):
        run.add(CommitBundle(**{**_fields(dup), "block_hash": block_hash(0)}))
    with pytest.raises(InvalidBundleError, match="malformed"):
        run.add(CommitBundle(**{**_fields(dup), "tree_writes": [(b"n", None)]}))
    run.add(make_bundle(1))
    run.write()
    assert store.latest_height() == 1
    store.verify()
    with pytest.raises(ValueError):
        run.add(make_bundle(2))


def _fields(b: CommitBundle) -> dict[str, object]:
    return {name: getattr(b, name) for name in CommitBundle.__dataclass_fields__}


def test_a_run_survives_a_restart_whole(backend: Backend) -> None:
    store = backend.open()
    run = store.begin_run()
    for bundle in _bundles(0, 9):
        run.add(bundle)
    run.write()
    store = backend.open()
    assert store.latest_height() == 8
    store.verify()
