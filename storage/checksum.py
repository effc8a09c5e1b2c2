"""Checksummed framing of every stored value.

Stored value = ``version (1 byte) || crc (4 bytes, big-endian) || payload``,
where ``crc = CRC-32(version || key || payload)`` (zlib's CRC-32, IEEE
polynomial; computed incrementally, so nothing is concatenated to check it). Why this shape:

- CRC-32 is in the standard library, implemented in C, and catches every
  burst error up to 32 bits; we defend against a lying disk, not an attacker
  (tamper evidence is the hash chain and the commit certificates).
- The key is covered too, so a value that ends up under another key (a
  misdirected write, a copied file region) fails its check instead of being
  served as the other key's data.
- The version byte lets a later format (say, CRC-32C or compression) coexist
  with old values; an unknown version is corruption, not a guess.

LevelDB has block checksums of its own (``paranoid_checks``,
``verify_checksums``); ours also cover the in-memory twin and the logical
placement of a value, and surface as one typed error.
"""

from __future__ import annotations

import struct
import zlib

from ledger.errors import CorruptionError
from storage import schema

FORMAT_V1 = 1
_CRC_V1 = zlib.crc32(bytes([FORMAT_V1]))
_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size

# Keys in error messages: enough hex to find the entry, bounded so that a
# message never grows with a (ledger-chosen) key.
_MAX_KEY_HEX_BYTES = 48


def describe_key(key: bytes) -> str:
    """``namespace/hex`` of a raw key, for errors and logs (never the value)."""
    ns = schema.namespace_of(key)
    label = ns.label if ns is not None else "unknown"
    body = key[1:] if ns is not None else key
    text = body[:_MAX_KEY_HEX_BYTES].hex()
    if len(body) > _MAX_KEY_HEX_BYTES:
        text += f"...({len(body)} bytes)"
    return f"{label}/{text}"


def seal(key: bytes, payload: bytes) -> bytes:
    """Frame ``payload`` for storage under ``key``."""
    crc = zlib.crc32(payload, zlib.crc32(key, _CRC_V1))
    return _HEADER.pack(FORMAT_V1, crc) + payload


def unseal(key: bytes, stored: bytes) -> bytes:
    """Return the payload stored under ``key``, or raise :class:`CorruptionError`."""
    if len(stored) < HEADER_SIZE:
        raise CorruptionError(f"truncated value ({len(stored)} bytes) at {describe_key(key)}")
    if stored[0] != FORMAT_V1:
        raise CorruptionError(f"unknown value format {stored[0]} at {describe_key(key)}")
    payload = stored[HEADER_SIZE:]
    crc = zlib.crc32(payload, zlib.crc32(key, _CRC_V1))
    if crc != _HEADER.unpack_from(stored)[1]:
        raise CorruptionError(f"checksum mismatch at {describe_key(key)}")
    return payload
