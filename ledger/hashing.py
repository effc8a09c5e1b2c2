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


# Envelope domains (helper C): associated-data prefix of every record ciphertext,
# so a ciphertext is bound both to its record id and to its role in this protocol.
AD_RECORD = b"medledger/record-ad/v1\x00"

# State tree domains (helper A, ledger/state_tree.py): bucket = its sorted
# (key, value hash) leaves, node = its 16 children; genesis document hash.
H_STATE_BUCKET = b"medledger/state-bucket/v1\x00"
H_STATE_NODE = b"medledger/state-node/v1\x00"
H_GENESIS = b"medledger/genesis/v1\x00"
