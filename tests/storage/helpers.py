"""Deterministic commit bundles for storage tests (and the crash child)."""

from __future__ import annotations

import hashlib

from storage.api import CommitBundle


def h32(*parts: object) -> bytes:
    """A deterministic 32-byte hash of ``parts``."""
    return hashlib.sha256(repr(parts).encode()).digest()


def tx_hash(height: int, index: int) -> bytes:
    return h32("tx", height, index)


def block_hash(height: int) -> bytes:
    return h32("block", height)


def blob_hash(height: int, index: int) -> bytes:
    return h32("blob", height, index)


def height_state_key(height: int) -> bytes:
    """A state key that only the bundle of ``height`` writes."""
    return b"height/" + height.to_bytes(8, "big")


def make_bundle(
    height: int,
    *,
    txs: int = 3,
    blobs: int = 1,
    blob_size: int = 64,
    blob_deletes: tuple[bytes, ...] = (),
    extra_state: tuple[tuple[bytes, bytes | None], ...] = (),
) -> CommitBundle:
    """A bundle whose every part is derived from ``height`` (so it can be re-derived)."""
    state: list[tuple[bytes, bytes | None]] = [
        (b"last", height.to_bytes(8, "big")),
        (height_state_key(height), block_hash(height)),
    ]
    state += [(b"acct/" + tx_hash(height, i)[:8], b"v%d" % height) for i in range(txs)]
    state += list(extra_state)
    return CommitBundle(
        height=height,
        block_hash=block_hash(height),
        block_bytes=b"block:"
        + height.to_bytes(8, "big")
        + b"".join(tx_hash(height, i) for i in range(txs)),
        certificate=b"cert:" + h32("cert", height),
        tx_hashes=[tx_hash(height, i) for i in range(txs)],
        results=b"results:" + bytes(txs),
        state_writes=state,
        tree_writes=[(b"node/" + height.to_bytes(8, "big"), h32("node", height))],
        state_root=h32("root", height),
        blob_puts=[
            (blob_hash(height, i), (h32("blobdata", height, i) * (blob_size // 32 + 1))[:blob_size])
            for i in range(blobs)
        ],
        blob_deletes=blob_deletes,
    )
