"""Hashing with domain separation.

Every hash and every signed message is prefixed with a tag naming what it is,
so bytes valid in one role (a tx) can never be replayed in another (a vote, a
Merkle node). The tags are part of the protocol: changing one is a fork.
"""

from __future__ import annotations

import hashlib

HASH_SIZE = 32

# Signing domains (prefix of the signed bytes).
SIGN_TX = b"medledger/tx/v1\x00"
SIGN_CONSENSUS = b"medledger/consensus/v1\x00"
SIGN_API_REQUEST = b"medledger/api-request/v1\x00"

# Hash domains.
H_TX = b"medledger/txhash/v1\x00"
H_BLOB = b"medledger/blob/v1\x00"
H_BLOCK = b"medledger/block/v1\x00"


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def tagged_hash(tag: bytes, data: bytes) -> bytes:
    """SHA-256 of ``tag || data``; ``tag`` must be one of this module's constants."""
    h = hashlib.sha256(tag)
    h.update(data)
    return h.digest()
