"""LevelDB's memory-mapped tables stay bounded however large the store grows (issue 6).

LevelDB maps every table it holds open, and every page read through a map
counts in the node's resident set until the table is closed. With LevelDB's
default table cache (1,000 files) a full pass over a store, like the
start-up ``Store.verify``, left the whole store in RSS. The test writes more
tables than the cache holds, reads everything, and counts the table maps.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from storage.kv import MAX_OPEN_FILES, LevelDBKV

#: Tables LevelDB may keep open (and mapped): its table cache holds
#: ``max_open_files - 10`` (db/db_impl.cc, kNumNonTableCacheFiles).
TABLE_CACHE = MAX_OPEN_FILES - 10


def _mapped_tables(db_dir: Path) -> int:
    """How many of ``db_dir``'s table files this process has mapped."""
    prefix = os.fspath(db_dir.resolve())
    with open("/proc/self/maps") as maps:
        return len(
            {
                line.split()[-1]
                for line in maps
                if line.rstrip().endswith(".ldb") and line.split()[-1].startswith(prefix)
            }
        )


def _key(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "big")).digest()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc (Linux)")
def test_a_full_pass_keeps_at_most_the_table_cache_mapped(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    kv = LevelDBKV(db_dir)
    try:
        value = os.urandom(1000)  # incompressible, and compression is off anyway
        for batch in range(150):  # ~150 MB: about 75 tables of 2 MiB
            # Scattered keys, as the state's hashes are: compactions then cut
            # 2 MiB tables instead of moving whole memtable flushes down.
            ops = [(_key(batch * 1000 + i), value) for i in range(1000)]
            kv.write(ops, sync=False)
        kv.compact(b"", None)  # flush the memtable and settle the levels
        tables = len(list(db_dir.glob("*.ldb")))
        assert tables > TABLE_CACHE, f"only {tables} tables: the test proves nothing"
        count = sum(1 for _ in kv.iterate(b"", None))  # read every table, like verify()
        assert count == 150_000
        assert _mapped_tables(db_dir) <= TABLE_CACHE
    finally:
        kv.close()
