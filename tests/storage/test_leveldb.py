"""What only the LevelDB backend can do wrong: locks, damaged files, the benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import CorruptionError, StoreUnavailableError
from storage import bench, schema
from storage.__main__ import main as storage_main
from storage.store import open_leveldb
from tests.storage.helpers import make_bundle


def test_second_open_of_a_live_store_is_refused(tmp_path: Path) -> None:
    with open_leveldb(tmp_path / "db") as store:
        store.commit(make_bundle(0))
        with pytest.raises(StoreUnavailableError):
            open_leveldb(tmp_path / "db")
        assert store.latest_height() == 0  # the first handle is unharmed


def test_missing_store_without_create_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError):
        open_leveldb(tmp_path / "nothing", create=False)


def test_damaged_table_file_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with open_leveldb(path) as store:
        for h in range(20):
            store.commit(make_bundle(h, txs=20, blobs=2, blob_size=4096))
        store.compact_blobs()  # moves everything from the log into table files
    tables = sorted(path.glob("*.ldb"))
    assert tables
    for table in tables:
        data = bytearray(table.read_bytes())
        for pos in range(100, len(data) // 2, 997):
            data[pos] ^= 0x5A
        table.write_bytes(bytes(data))
    # Detected at open (paranoid checks) or, at the latest, by the full scan.
    with pytest.raises(CorruptionError), open_leveldb(path) as store:
        store.verify()


def test_benchmark_command_prints_each_backend(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--txs", "20", "--blocks", "2", "--blob-bytes", "64"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("commit of 20-tx bundles")
    assert [line.split(" us/tx")[0].rsplit(maxsplit=1)[0] for line in out[1:]] == [
        "leveldb sync",
        "leveldb no-sync",
        "memory",
    ]
    # 20 txs x (1 location + 2 state + 4 tree + 1 blob) + 6 per height + 3 metadata,
    # averaged with the one-off schema version and base height: (1 + 170 + 169) // 2
    assert "170 keys" in out[1]


def test_operator_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "db"
    with open_leveldb(path) as store:
        store.commit(make_bundle(0))
        store.put_blobs([(b"\x07" * 32, b"..secret-marker..")])
    assert storage_main(["verify", str(path)]) == 0
    assert '"last_height": 0' in capsys.readouterr().out
    assert storage_main(["find-marker", str(path), b"secret-marker".hex()]) == 1
    assert "blob/" + "07" * 32 in capsys.readouterr().out
    assert storage_main(["find-marker", str(path), b"absent".hex()]) == 0
    with open_leveldb(path) as store:
        key = schema.block_key(0)
        raw = store.kv.get(key)
        assert raw is not None
        store.kv.write([(key, raw[:-1] + bytes([raw[-1] ^ 1]))], sync=True)
    assert storage_main(["verify", str(path)]) == 1
    assert "CORRUPTION" in capsys.readouterr().err
    assert storage_main(["verify", str(tmp_path / "missing")]) == 2
