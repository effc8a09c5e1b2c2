"""The ledger state: its key schema, its value types, and a one-block overlay.

Key schema (the ONLY place a logical state key is built). A logical key is a
one-byte prefix and fixed-size fields:

=======  ==========================================  =====================  =========
prefix   fields                                      value                  group
=======  ==========================================  =====================  =========
``I``    identity key (32)                           :class:`Identity`      whole key
``R``    record id (16..32)                          :class:`RecordMeta`    whole key
``C``    consent id (16..32)                         :class:`ConsentEntry`  whole key
``G``    patient (32) + grantee (32) + consent id    :class:`GrantRef`      ``G``+patient+grantee
``U``    patient (32) + sequence (8, big-endian)     :class:`AuditEntry`    ``U``+patient+seq[:7]
``E``    record id + reader (32)                     :class:`EmergencyGrant` whole key
``M``    name                                        :class:`ChainMeta`     whole key
=======  ==========================================  =====================  =========

The state tree (:mod:`ledger.state_tree`) puts every key in one of 65,536
buckets: ``bucket = sha256(group)[:2]`` where the *group* is a prefix of the
key given by the table. The key stored in the database is ``bucket + logical
key``, so a bucket is one prefix scan, and so is a group: all grants of one
patient to one grantee, or a chunk of 256 consecutive audit entries of one
patient. Grouping keeps listings cheap without letting one hot patient grow a
bucket without bound (a chunk is at most 256 entries).

Stored values are ``sha256(value) + value``, ``value`` the canonical encoding
of a Record: the state tree needs every entry's value hash to re-hash a
bucket, and keeping it beside the value means an unchanged entry is never
re-hashed, so a block's cost does not grow with the size of the state.

One :class:`Identity` per key holds the account nonce *and* the role
(organisation, clinician with its organisation, patient with its registering
organisation), so the per-tx sender check is one read and one write.

:class:`StateView` is the write overlay of one block: later txs in the block
see earlier writes; nothing reaches storage until the block's
:class:`~ledger.apply.ApplyResult` is committed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from typing import TypeVar

from ledger import codec
from ledger.codec import Record
from ledger.errors import CorruptionError, DecodeError
from ledger.tx import GrantConsent
from storage.api import StateReader

R = TypeVar("R", bound=Record)

# --- key schema -------------------------------------------------------------------

P_IDENTITY = b"I"
P_RECORD = b"R"
P_CONSENT = b"C"
P_GRANT = b"G"
P_AUDIT = b"U"
P_EMERGENCY = b"E"
P_META = b"M"

BUCKET_BYTES = 2
VALUE_HASH_BYTES = 32
AUDIT_CHUNK_BITS = 8  # 256 audit entries of one patient share a bucket
_GROUP_LEN = {
    P_GRANT[0]: 1 + 32 + 32,
    P_AUDIT[0]: 1 + 32 + 7,
}

KIND_ORGANISATION = 1
KIND_CLINICIAN = 2
KIND_PATIENT = 3


def identity_key(key: bytes) -> bytes:
    return P_IDENTITY + key


def record_key(record_id: bytes) -> bytes:
    return P_RECORD + record_id


def consent_key(consent_id: bytes) -> bytes:
    return P_CONSENT + consent_id


def grant_group(patient: bytes, grantee: bytes) -> bytes:
    return P_GRANT + patient + grantee


def grant_key(patient: bytes, grantee: bytes, consent_id: bytes) -> bytes:
    return P_GRANT + patient + grantee + consent_id


def audit_key(patient: bytes, seq: int) -> bytes:
    return P_AUDIT + patient + seq.to_bytes(8, "big")


def audit_chunk(patient: bytes, chunk: int) -> bytes:
    """Group prefix of audit entries ``chunk * 256 .. chunk * 256 + 255``."""
    return P_AUDIT + patient + chunk.to_bytes(7, "big")


def emergency_key(record_id: bytes, reader: bytes) -> bytes:
    return P_EMERGENCY + record_id + reader


META_CHAIN = P_META + b"chain"


def group_of(key: bytes) -> bytes:
    """The prefix of ``key`` that decides its bucket."""
    return key[: _GROUP_LEN.get(key[0], len(key))] if key else key


@functools.lru_cache(maxsize=1 << 16)
def bucket_of(key: bytes) -> bytes:
    """The 2-byte bucket of a logical key (also the prefix of its stored key)."""
    return hashlib.sha256(group_of(key)).digest()[:BUCKET_BYTES]


def stored_key(key: bytes) -> bytes:
    return bucket_of(key) + key


# --- values -----------------------------------------------------------------------


class Identity(Record, frozen=True):
    """A registered key: its role, organisation, account nonce and audit count.

    ``org`` is the employer of a clinician, the registering organisation of a
    patient, and the organisation itself for an organisation. ``nonce`` is the
    next nonce the key must use. ``audit_count`` (patients only) is the number
    of audit entries of the patient, the next sequence number.
    """

    kind: int
    org: bytes
    name: str
    nonce: int = 0
    audit_count: int = 0


class ReaderWrap(Record, frozen=True):
    """A reader of a record; ``wrap_blob_hash`` is None when the wrap is in the record blob."""

    reader: bytes
    wrap_blob_hash: bytes | None = None


class RecordMeta(Record, frozen=True):
    """An anchored record; a tombstone once ``erased_at`` is set (hashes only, no data)."""

    patient: bytes
    category: str
    custodian: bytes
    blob_hash: bytes
    readers: list[ReaderWrap]  # sorted by reader
    supersedes: bytes | None
    anchored_at: int
    erased_at: int | None = None

    def blob_hashes(self) -> list[bytes]:
        """Every blob this record owns: its own and each key-release wrap."""
        out = [self.blob_hash]
        out.extend(r.wrap_blob_hash for r in self.readers if r.wrap_blob_hash is not None)
        return out


class ConsentEntry(Record, frozen=True):
    patient: bytes
    grant: GrantConsent
    granted_at: int
    revoked_at: int | None = None


class GrantRef(Record, frozen=True):
    """Index entry: the consent id is in the key."""


class AuditEntry(Record, frozen=True):
    """One access attempt on a patient's record, allowed or not."""

    patient: bytes
    seq: int
    height: int
    index: int
    tx_hash: bytes
    reader: bytes
    record_id: bytes
    purpose: str
    outcome: str  # "OK" or the refusal code (CONSENT_DENIED, ERASED)
    reason: str  # the access decision's reason code
    emergency: bool
    consent_id: bytes | None = None
    emergency_reason: str | None = None


class EmergencyGrant(Record, frozen=True):
    """A break-glass access that was allowed, so the custodian may release a key."""

    height: int


class ChainMeta(Record, frozen=True):
    chain_id: str
    genesis_hash: bytes


# --- overlay -----------------------------------------------------------------------


class StateView:
    """Committed state plus the writes of the block being applied.

    Reads go to the overlay first, then to the :class:`StateReader`; decoded
    values are cached so a key read by several txs is decoded once. Writes are
    encoded when made and hashed once, when the block is finished
    (:meth:`pending`). A stored value that fails to decode is a
    :class:`CorruptionError` (our disk, not the peer).
    """

    __slots__ = ("_buckets", "_cache", "_final", "_reader")

    def __init__(self, reader: StateReader) -> None:
        self._reader = reader
        self._buckets: dict[bytes, dict[bytes, bytes | None]] = {}  # bucket -> logical -> value
        self._cache: dict[bytes, object] = {}  # logical key -> decoded value or None
        self._final: dict[bytes, dict[bytes, bytes | None]] | None = None

    @property
    def reader(self) -> StateReader:
        return self._reader

    def get_raw(self, key: bytes) -> bytes | None:
        """The encoded value of logical ``key`` (without its stored hash), or None."""
        bucket = bucket_of(key)
        pending = self._buckets.get(bucket)
        if pending is not None and key in pending:
            return pending[key]
        return strip_value(self._reader.get_state(bucket + key), key)

    def get(self, key: bytes, type_: type[R]) -> R | None:
        try:
            cached = self._cache[key]
        except KeyError:
            raw = self.get_raw(key)
            cached = None if raw is None else _decode_stored(raw, type_, key)
            self._cache[key] = cached
        if cached is not None and not isinstance(cached, type_):
            raise CorruptionError(f"state key {key[:1]!r} holds a {type(cached).__name__}")
        return cached

    def put(self, key: bytes, value: Record) -> None:
        self._buckets.setdefault(bucket_of(key), {})[key] = codec.encode(value)
        self._cache[key] = value
        self._final = None

    def delete(self, key: bytes) -> None:
        self._buckets.setdefault(bucket_of(key), {})[key] = None
        self._cache[key] = None
        self._final = None

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (logical key, value) under ``prefix``, overlay included, in key order.

        ``prefix`` must extend a whole group (see the key schema), so that it
        lies in one bucket.
        """
        group = group_of(prefix)
        if len(prefix) < len(group) or group != prefix[: len(group)]:
            raise ValueError("scan prefix must cover a whole key group")
        bucket = bucket_of(prefix)
        merged: dict[bytes, bytes | None] = {
            k[BUCKET_BYTES:]: strip_value(v, k) for k, v in self._reader.scan_state(bucket + prefix)
        }
        pending = self._buckets.get(bucket)
        if pending:
            for k, v in pending.items():
                if k.startswith(prefix):
                    merged[k] = v
        return sorted((k, v) for k, v in merged.items() if v is not None)

    def pending(self) -> dict[bytes, dict[bytes, bytes | None]]:
        """Bucket -> logical key -> stored value (hash + value) or None, for every write."""
        if self._final is None:
            sha = hashlib.sha256
            self._final = {
                bucket: {k: None if v is None else sha(v).digest() + v for k, v in writes.items()}
                for bucket, writes in self._buckets.items()
            }
        return self._final

    def writes(self) -> list[tuple[bytes, bytes | None]]:
        """The block's state writes as (stored key, stored value or None), sorted by key."""
        return sorted(
            (bucket + k, v) for bucket, writes in self.pending().items() for k, v in writes.items()
        )

    # --- typed accessors ---------------------------------------------------------

    def identity(self, key: bytes) -> Identity | None:
        return self.get(identity_key(key), Identity)

    def organisation(self, key: bytes) -> Identity | None:
        ident = self.identity(key)
        return ident if ident is not None and ident.kind == KIND_ORGANISATION else None

    def clinician(self, key: bytes) -> Identity | None:
        ident = self.identity(key)
        return ident if ident is not None and ident.kind == KIND_CLINICIAN else None

    def patient(self, key: bytes) -> Identity | None:
        ident = self.identity(key)
        return ident if ident is not None and ident.kind == KIND_PATIENT else None

    def record(self, record_id: bytes) -> RecordMeta | None:
        return self.get(record_key(record_id), RecordMeta)

    def consent(self, consent_id: bytes) -> ConsentEntry | None:
        return self.get(consent_key(consent_id), ConsentEntry)

    def grant_ids(self, patient: bytes, grantee: bytes) -> list[bytes]:
        """Consent ids the patient ever granted to ``grantee``, in id order."""
        group = grant_group(patient, grantee)
        return [k[len(group):] for k, _ in self.scan(group)]

    def emergency_grant(self, record_id: bytes, reader: bytes) -> EmergencyGrant | None:
        return self.get(emergency_key(record_id, reader), EmergencyGrant)

    def audit_log(self, patient: bytes, start: int = 0) -> Iterator[AuditEntry]:
        """The patient's audit entries from sequence ``start``, oldest first."""
        ident = self.patient(patient)
        count = 0 if ident is None else ident.audit_count
        first = start >> AUDIT_CHUNK_BITS
        last = (count - 1) >> AUDIT_CHUNK_BITS
        for chunk in range(first, last + 1):
            for key, raw in self.scan(audit_chunk(patient, chunk)):
                entry = _decode_stored(raw, AuditEntry, key)
                if entry.seq >= start:
                    yield entry

    def chain_meta(self) -> ChainMeta | None:
        return self.get(META_CHAIN, ChainMeta)


def strip_value(stored: bytes | None, key: bytes) -> bytes | None:
    """The encoded value inside a stored value (which starts with its hash)."""
    if stored is None:
        return None
    if len(stored) < VALUE_HASH_BYTES:
        raise CorruptionError(f"state value under prefix {key[:1]!r} is truncated")
    return stored[VALUE_HASH_BYTES:]


def _decode_stored(raw: bytes, type_: type[R], key: bytes) -> R:
    try:
        return codec.decode(raw, type_)
    except DecodeError:
        raise CorruptionError(
            f"state value under prefix {key[:1]!r} is not a {type_.__name__}"
        ) from None
