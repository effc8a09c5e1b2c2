"""Commit micro-benchmark: microseconds per tx to commit a block bundle.

    python -m storage.bench [--txs 500] [--blocks 20] [--dir DIR]

Prints (never asserts) the cost of ``Store.commit`` for synthetic bundles of
a realistic shape, on LevelDB with ``sync=True`` (what a node runs), LevelDB
without fsync (the CPU part) and the in-memory twin (validation, checksums
and batch building alone). Bundles are built before the clock starts.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from storage.api import CommitBundle
from storage.store import Store, open_leveldb, open_memory


@dataclass(frozen=True, slots=True)
class Shape:
    """What one synthetic tx adds to a bundle (sizes in bytes)."""

    tx_bytes: int = 300  # signed tx inside the block
    state_writes: int = 2  # e.g. the sender's nonce and the record entry
    state_value: int = 80
    tree_writes: int = 4  # state-tree nodes touched per tx
    blob_bytes: int = 0  # blobs usually arrive before commit (put_blobs)


def _h(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def synthetic_bundle(height: int, txs: int, shape: Shape) -> CommitBundle:
    """A bundle of ``txs`` synthetic transactions at ``height``."""
    tx_hashes = [_h("tx", height, i) for i in range(txs)]
    filler = _h("fill", height) * (shape.tx_bytes // 32 + 1)
    return CommitBundle(
        height=height,
        block_hash=_h("block", height),
        block_bytes=b"".join(t + filler[: shape.tx_bytes - 32] for t in tx_hashes),
        certificate=_h("cert", height) * 12,  # ~3 signatures with their keys
        tx_hashes=tx_hashes,
        results=bytes(txs),
        state_writes=[
            (b"s/" + t[:16] + bytes([j]), (t * 4)[: shape.state_value])
            for t in tx_hashes
            for j in range(shape.state_writes)
        ],
        tree_writes=[
            (b"t/" + t[:16] + bytes([j]), t + t)
            for t in tx_hashes
            for j in range(shape.tree_writes)
        ],
        state_root=_h("root", height),
        blob_puts=[
            (_h("blob", t), (t * (shape.blob_bytes // 32 + 1))[: shape.blob_bytes])
            for t in tx_hashes
        ]
        if shape.blob_bytes
        else (),
    )


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    us_per_tx_median: float
    us_per_tx_mean: float
    ms_per_block_median: float
    keys_per_block: int
    bytes_per_block: int


def measure(name: str, store: Store, txs: int, blocks: int, shape: Shape) -> Figure:
    bundles = [synthetic_bundle(h, txs, shape) for h in range(blocks)]
    seconds: list[float] = []
    for bundle in bundles:
        started = time.perf_counter()
        store.commit(bundle)
        seconds.append(time.perf_counter() - started)
    stats = store.statistics()
    per_tx = [s / txs * 1e6 for s in seconds]
    return Figure(
        name=name,
        us_per_tx_median=statistics.median(per_tx),
        us_per_tx_mean=statistics.fmean(per_tx),
        ms_per_block_median=statistics.median(seconds) * 1e3,
        keys_per_block=(stats.keys_written + stats.keys_deleted) // max(stats.commits, 1),
        bytes_per_block=stats.bytes_written // max(stats.commits, 1),
    )


def run(txs: int, blocks: int, shape: Shape, directory: Path) -> list[Figure]:
    backends: Sequence[tuple[str, Callable[[], Store]]] = (
        ("leveldb sync", lambda: open_leveldb(directory / "sync")),
        ("leveldb no-sync", lambda: open_leveldb(directory / "nosync", sync=False)),
        ("memory", open_memory),
    )
    figures = []
    for name, opener in backends:
        with opener() as store:
            figures.append(measure(name, store, txs, blocks, shape))
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--txs", type=int, default=500, help="transactions per block")
    parser.add_argument("--blocks", type=int, default=20, help="blocks per backend")
    parser.add_argument("--blob-bytes", type=int, default=0, help="blob committed per tx")
    parser.add_argument("--dir", type=Path, default=None, help="LevelDB parent dir (default: tmp)")
    args = parser.parse_args(argv)
    shape = Shape(blob_bytes=args.blob_bytes)
    print(
        f"commit of {args.txs}-tx bundles, {args.blocks} blocks per backend; per tx: "
        f"{shape.tx_bytes} B in block, {shape.state_writes} state writes of "
        f"{shape.state_value} B, {shape.tree_writes} tree nodes, {shape.blob_bytes} B blob"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for f in run(args.txs, args.blocks, shape, Path(tmp)):
            print(
                f"{f.name:16} {f.us_per_tx_median:7.2f} us/tx median "
                f"({f.us_per_tx_mean:.2f} mean), {f.ms_per_block_median:7.2f} ms/block, "
                f"{f.keys_per_block} keys and {f.bytes_per_block / 1024:.0f} KiB per batch"
            )


if __name__ == "__main__":
    main()
