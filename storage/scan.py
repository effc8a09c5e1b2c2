"""Search a store for a byte marker: the "no plaintext at rest" check.

Tests put a marker inside a record's plaintext, run it through the system and
then ask where, if anywhere, the marker can be found: in any key or value the
store returns, and (for LevelDB) in the raw bytes of any file of its
directory, which also covers values LevelDB has deleted but not yet
compacted away. An operator can run the same check against a stopped node.
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.checksum import describe_key
from storage.kv import KV


def find_in_kv(kv: KV, marker: bytes) -> list[str]:
    """Every key (``namespace/hex``) whose key or stored value contains ``marker``."""
    if not marker:
        raise ValueError("empty marker")
    return [
        describe_key(key)
        for key, value in kv.iterate(b"", None)
        if marker in key or marker in value
    ]


def find_in_files(directory: str | os.PathLike[str], marker: bytes) -> list[str]:
    """Every file under ``directory`` whose raw bytes contain ``marker``."""
    if not marker:
        raise ValueError("empty marker")
    hits: list[str] = []
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and marker in path.read_bytes():
            hits.append(str(path))
    return hits


def find_marker(
    kv: KV, marker: bytes, *, leveldb_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """Where ``marker`` occurs: keys of ``kv``, then (optionally) files of ``leveldb_dir``.

    An empty list means the marker is nowhere in the store.
    """
    hits = find_in_kv(kv, marker)
    if leveldb_dir is not None:
        hits.extend("file:" + p for p in find_in_files(leveldb_dir, marker))
    return hits
