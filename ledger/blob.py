"""The sidecar blob: what travels beside a tx but never enters a block.

An :class:`~ledger.tx.AnchorRecord` commits to a :class:`RecordBlob`
(ciphertext plus one key wrap per reader) through ``blob_hash``; a
:class:`~ledger.tx.KeyRelease` commits to a :class:`WrapBlob` (one more wrap
for an existing record) through ``wrap_blob_hash``. The signed tx holds only
the hash, so erasing the blob (crypto-shredding) leaves a chain that still
verifies, and apply never needs to read a blob.

Blobs use the one canonical codec, so a blob has exactly one byte string and
its hash is a property of its value. The two kinds are a tagged union, so bytes
of one kind can never be read as the other.

Node side: :func:`check_blob_for_tx` is the stateless check run on arrival
(size, hash, structure, agreement with the signed body). Client side:
:func:`seal_record`, :func:`open_record` and :func:`make_wrap_blob`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from ledger import codec, envelope
from ledger.codec import Record
from ledger.errors import (
    BlobMismatchError,
    BlobMissingError,
    BlobReadersError,
    BlobRecordError,
    DecryptionError,
    InvalidBlobError,
    TooLargeError,
)
from ledger.hashing import H_BLOB, tagged_hash
from ledger.keys import PUBLIC_KEY_SIZE, KeyPair
from ledger.tx import AnchorRecord, KeyRelease, Tx

#: Default upper bound on one blob's encoded size; the node config may lower it.
MAX_BLOB_SIZE = 4 * 1024 * 1024


class KeyWrap(Record, frozen=True):
    """The record key sealed to ``reader`` (an ed25519 id)."""

    reader: bytes
    sealed_key: bytes


class RecordBlob(Record, frozen=True, tag=1):
    """Ciphertext of one record and its key wraps, sorted by reader, unique."""

    record_id: bytes
    nonce: bytes
    ciphertext: bytes
    wraps: list[KeyWrap]


class WrapBlob(Record, frozen=True, tag=2):
    """Extra key wraps for an existing record (the sidecar of a key release)."""

    record_id: bytes
    wraps: list[KeyWrap]


Blob = RecordBlob | WrapBlob


def blob_hash(blob_bytes: bytes) -> bytes:
    """The hash a tx body commits to: tagged SHA-256 of the blob's canonical bytes."""
    return tagged_hash(H_BLOB, blob_bytes)


def canonical_readers(readers: Iterable[bytes]) -> list[bytes]:
    """Readers as a body lists them and a blob orders its wraps: sorted, unique."""
    return sorted(set(readers))


def _check_wraps(wraps: list[KeyWrap], *, allow_empty: bool) -> None:
    if not wraps and not allow_empty:
        raise InvalidBlobError("blob carries no key wrap")
    for w in wraps:
        if len(w.reader) != PUBLIC_KEY_SIZE:
            raise InvalidBlobError(f"wrap reader must be {PUBLIC_KEY_SIZE} bytes")
        if len(w.sealed_key) != envelope.WRAP_SIZE:
            raise InvalidBlobError(f"sealed key must be {envelope.WRAP_SIZE} bytes")
    for a, b in itertools.pairwise(wraps):
        if not a.reader < b.reader:
            raise InvalidBlobError("wraps are not sorted by reader and unique")


def decode_blob(data: bytes, max_size: int = MAX_BLOB_SIZE) -> Blob:
    """Decode and structurally check a blob from outside.

    Raises :class:`~ledger.errors.TooLargeError` before parsing when over
    ``max_size``, :class:`~ledger.errors.DecodeError` (or its
    ``NonCanonicalError``) for bad bytes, and :class:`InvalidBlobError` for a
    blob with wrong field sizes, no wraps, or wraps out of order.
    """
    blob: Blob = codec.decode(data, Blob, max_size=max_size)  # type: ignore[arg-type]
    if isinstance(blob, RecordBlob):
        if len(blob.nonce) != envelope.NONCE_SIZE:
            raise InvalidBlobError(f"nonce must be {envelope.NONCE_SIZE} bytes")
        if len(blob.ciphertext) < envelope.TAG_SIZE:
            raise InvalidBlobError("ciphertext shorter than its authentication tag")
    _check_wraps(blob.wraps, allow_empty=False)
    return blob


def _expected_blob(tx: Tx) -> tuple[bytes, type[Blob], bytes, list[bytes]] | None:
    """(committed hash, blob kind, record id, readers) for txs that carry a blob."""
    body = tx.body
    if isinstance(body, AnchorRecord):
        return body.blob_hash, RecordBlob, body.record_id, list(body.readers)
    if isinstance(body, KeyRelease):
        return body.wrap_blob_hash, WrapBlob, body.record_id, [body.reader]
    return None


def check_blob_for_tx(
    tx: Tx, blob_bytes: bytes | None, *, max_size: int = MAX_BLOB_SIZE
) -> Blob | None:
    """Check the sidecar that arrived with ``tx``; return the decoded blob (or ``None``).

    In order, so the cheapest refusal comes first: a tx that needs no blob
    must not bring one (:class:`BlobMismatchError`); one that needs a blob must
    bring it (:class:`BlobMissingError`); the blob must be within ``max_size``
    (:class:`~ledger.errors.TooLargeError`) and hash to what the signed body
    commits to (:class:`BlobMismatchError`); it must decode as the right kind
    (:class:`~ledger.errors.DecodeError` family); it must name the body's record
    (:class:`BlobRecordError`) and carry wraps for exactly the body's readers
    (:class:`BlobReadersError`).
    """
    expected = _expected_blob(tx)
    if expected is None:
        if blob_bytes is not None:
            raise BlobMismatchError(f"a {tx.type_name} tx carries no blob")
        return None
    committed_hash, kind, record_id, readers = expected
    if blob_bytes is None:
        raise BlobMissingError(f"a {tx.type_name} tx needs its blob")
    blob = _decode_sized_and_hashed(blob_bytes, committed_hash, max_size)
    if not isinstance(blob, kind):
        raise BlobMismatchError(f"a {tx.type_name} tx needs a {kind.__name__}")
    if blob.record_id != record_id:
        raise BlobRecordError("blob names a different record than the tx")
    if [w.reader for w in blob.wraps] != readers:
        raise BlobReadersError("blob key wraps do not match the tx's readers")
    return blob


def _decode_sized_and_hashed(blob_bytes: bytes, committed_hash: bytes, max_size: int) -> Blob:
    if len(blob_bytes) > max_size:  # before hashing: never hash a huge input
        raise TooLargeError(f"blob of {len(blob_bytes)} bytes exceeds limit of {max_size}")
    if blob_hash(blob_bytes) != committed_hash:
        raise BlobMismatchError(
            f"blob hashes to {blob_hash(blob_bytes).hex()[:16]}..., "
            f"tx commits to {committed_hash.hex()[:16]}..."
        )
    return decode_blob(blob_bytes, max_size)


# --- client side ---------------------------------------------------------------


def _wraps_for(record_key: bytes, readers: Iterable[bytes]) -> list[KeyWrap]:
    return [KeyWrap(r, envelope.wrap_key(record_key, r)) for r in canonical_readers(readers)]


def seal_record(
    plaintext: bytes, record_id: bytes, readers: Iterable[bytes]
) -> tuple[bytes, bytes, bytes]:
    """Encrypt a record for ``readers``; return ``(blob_bytes, blob_hash, record_key)``.

    The AnchorRecord body must list ``canonical_readers(readers)`` and
    ``blob_hash``. Keep ``record_key`` only as long as you need it for key
    releases (the custodian); it is never sent anywhere in clear.
    """
    record_key, nonce, ciphertext = envelope.encrypt_record(plaintext, record_id)
    wraps = _wraps_for(record_key, readers)
    if not wraps:
        raise InvalidBlobError("a record needs at least one reader")
    data = codec.encode(RecordBlob(record_id, nonce, ciphertext, wraps))
    return data, blob_hash(data), record_key


def make_wrap_blob(
    record_id: bytes, record_key: bytes, readers: Iterable[bytes]
) -> tuple[bytes, bytes]:
    """A :class:`WrapBlob` releasing ``record_key`` to ``readers``: ``(blob_bytes, blob_hash)``."""
    wraps = _wraps_for(record_key, readers)
    if not wraps:
        raise InvalidBlobError("a key release needs at least one reader")
    data = codec.encode(WrapBlob(record_id, wraps))
    return data, blob_hash(data)


def _find_wrap(wraps: list[KeyWrap], reader: bytes) -> KeyWrap | None:
    for w in wraps:
        if w.reader == reader:
            return w
    return None


def open_record(
    blob_bytes: bytes,
    record_id: bytes,
    reader: KeyPair,
    *,
    wrap_blob: bytes | None = None,
    max_size: int = MAX_BLOB_SIZE,
) -> bytes:
    """Decrypt a record blob as ``reader``.

    The reader's wrap is taken from the record blob, or else from
    ``wrap_blob`` (the sidecar of a key release for this reader). Raises
    :class:`DecryptionError` when there is no wrap for the reader or nothing
    authenticates, and the decode errors of :func:`decode_blob` for bad bytes.
    """
    blob = decode_blob(blob_bytes, max_size)
    if not isinstance(blob, RecordBlob):
        raise InvalidBlobError("not a record blob")
    if blob.record_id != record_id:
        raise DecryptionError("blob belongs to a different record")
    wrap = _find_wrap(blob.wraps, reader.public_key)
    if wrap is None and wrap_blob is not None:
        extra = decode_blob(wrap_blob, max_size)
        if not isinstance(extra, WrapBlob) or extra.record_id != record_id:
            raise DecryptionError("wrap blob does not belong to this record")
        wrap = _find_wrap(extra.wraps, reader.public_key)
    if wrap is None:
        raise DecryptionError(f"no key wrap for reader {reader.public_key.hex()[:16]}...")
    record_key = envelope.unwrap_key(wrap.sealed_key, reader)
    return envelope.decrypt_record(record_key, blob.nonce, blob.ciphertext, record_id)
