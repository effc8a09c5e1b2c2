"""The sidecar blob: client helpers and the node's arrival check, error by error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import codec
from ledger.blob import (
    KeyWrap,
    RecordBlob,
    WrapBlob,
    blob_hash,
    canonical_readers,
    check_blob_for_tx,
    decode_blob,
    make_wrap_blob,
    open_record,
    seal_record,
)
from ledger.envelope import WRAP_SIZE
from ledger.errors import (
    BlobMismatchError,
    BlobMissingError,
    BlobReadersError,
    BlobRecordError,
    DecodeError,
    DecryptionError,
    InvalidBlobError,
    NonCanonicalError,
    TooLargeError,
)
from ledger.keys import KeyPair
from ledger.tx import AnchorRecord, KeyRelease, RegisterPatient, Tx, make_tx

CHAIN = "test-chain"
HOSPITAL = KeyPair.from_seed(b"H" * 32)
PATIENT = KeyPair.from_seed(b"P" * 32)
DOCTOR = KeyPair.from_seed(b"D" * 32)
STRANGER = KeyPair.from_seed(b"S" * 32)
RID = b"\x01" * 16
MARKER = b'{"resourceType":"Patient","name":"MARKER-Jane-Doe"}'


def anchor_tx(blob_h: bytes, readers: list[bytes], record_id: bytes = RID) -> Tx:
    body = AnchorRecord(
        record_id=record_id,
        patient=PATIENT.public_key,
        category="lab",
        custodian=HOSPITAL.public_key,
        blob_hash=blob_h,
        readers=readers,
    )
    return make_tx(HOSPITAL, CHAIN, 1, body)


def release_tx(wrap_h: bytes, reader: bytes, record_id: bytes = RID) -> Tx:
    return make_tx(HOSPITAL, CHAIN, 2, KeyRelease(record_id, reader, wrap_h))


READERS = canonical_readers([PATIENT.public_key, HOSPITAL.public_key])


@pytest.fixture(scope="module")
def sealed() -> tuple[bytes, bytes, bytes]:
    return seal_record(MARKER, RID, [PATIENT.public_key, HOSPITAL.public_key, PATIENT.public_key])


# --- client helpers -----------------------------------------------------------------


def test_seal_and_open_for_every_reader(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, h, _ = sealed
    assert h == blob_hash(data)
    assert MARKER not in data
    for reader in (PATIENT, HOSPITAL):
        assert open_record(data, RID, reader) == MARKER
    blob = decode_blob(data)
    assert isinstance(blob, RecordBlob)
    assert [w.reader for w in blob.wraps] == READERS  # sorted, deduplicated


def test_non_reader_cannot_open(sealed: tuple[bytes, bytes, bytes]) -> None:
    with pytest.raises(DecryptionError):
        open_record(sealed[0], RID, STRANGER)


def test_open_under_other_record_id_fails(sealed: tuple[bytes, bytes, bytes]) -> None:
    with pytest.raises(DecryptionError):
        open_record(sealed[0], b"\x02" * 16, PATIENT)


def test_key_release_lets_new_reader_open(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, _, record_key = sealed
    wrap_bytes, wrap_h = make_wrap_blob(RID, record_key, [DOCTOR.public_key])
    tx = release_tx(wrap_h, DOCTOR.public_key)
    assert isinstance(check_blob_for_tx(tx, wrap_bytes), WrapBlob)
    with pytest.raises(DecryptionError):
        open_record(data, RID, DOCTOR)
    assert open_record(data, RID, DOCTOR, wrap_blob=wrap_bytes) == MARKER
    with pytest.raises(DecryptionError):  # the release is for DOCTOR only
        open_record(data, RID, STRANGER, wrap_blob=wrap_bytes)
    other_bytes, _ = make_wrap_blob(b"\x02" * 16, record_key, [DOCTOR.public_key])
    with pytest.raises(DecryptionError):  # a release for another record
        open_record(data, RID, DOCTOR, wrap_blob=other_bytes)


def test_seal_needs_a_reader() -> None:
    with pytest.raises(InvalidBlobError):
        seal_record(MARKER, RID, [])
    with pytest.raises(InvalidBlobError):
        make_wrap_blob(RID, b"k" * 32, [])


# --- arrival check --------------------------------------------------------------------


def test_anchor_with_its_blob_passes(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, h, _ = sealed
    blob = check_blob_for_tx(anchor_tx(h, READERS), data)
    assert isinstance(blob, RecordBlob) and blob.record_id == RID


def test_tx_without_blob_needs_none() -> None:
    tx = make_tx(HOSPITAL, CHAIN, 1, RegisterPatient(PATIENT.public_key))
    assert check_blob_for_tx(tx, None) is None
    with pytest.raises(BlobMismatchError):
        check_blob_for_tx(tx, b"\x92\x01\x90")


def test_missing_blob(sealed: tuple[bytes, bytes, bytes]) -> None:
    with pytest.raises(BlobMissingError) as info:
        check_blob_for_tx(anchor_tx(sealed[1], READERS), None)
    assert info.value.code == "BLOB_MISSING"
    with pytest.raises(BlobMissingError):
        check_blob_for_tx(release_tx(b"\x00" * 32, DOCTOR.public_key), None)


def test_blob_hash_mismatch(sealed: tuple[bytes, bytes, bytes]) -> None:
    _, h, _ = sealed
    other, _, _ = seal_record(MARKER, RID, READERS)  # same content, fresh key and nonce
    with pytest.raises(BlobMismatchError) as info:
        check_blob_for_tx(anchor_tx(h, READERS), other)
    assert type(info.value) is BlobMismatchError and info.value.code == "BLOB_MISMATCH"


@given(st.integers(0, 10_000), st.integers(0, 7))
def test_any_flipped_bit_is_a_mismatch(pos: int, bit: int) -> None:
    data, h, _ = seal_record(b"x", RID, READERS)
    bad = bytearray(data)
    bad[pos % len(bad)] ^= 1 << bit
    with pytest.raises(BlobMismatchError):
        check_blob_for_tx(anchor_tx(h, READERS), bytes(bad))


def test_oversize_blob_rejected_before_hashing(
    sealed: tuple[bytes, bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, h, _ = sealed
    tx = anchor_tx(h, READERS)

    def no_hashing(_: bytes) -> bytes:
        raise AssertionError("hashed an oversize blob")

    monkeypatch.setattr("ledger.blob.blob_hash", no_hashing)
    with pytest.raises(TooLargeError) as info:
        check_blob_for_tx(tx, data, max_size=len(data) - 1)
    assert info.value.code == "TOO_LARGE"
    with pytest.raises(TooLargeError):
        decode_blob(data, max_size=len(data) - 1)


def test_wrong_readers(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, h, _ = sealed
    for readers in (
        [PATIENT.public_key],  # fewer than the blob carries
        canonical_readers([*READERS, DOCTOR.public_key]),  # more
        list(reversed(READERS)),  # not in canonical order
        [],
    ):
        with pytest.raises(BlobReadersError) as info:
            check_blob_for_tx(anchor_tx(h, readers), data)
        assert info.value.code == "BLOB_READERS_MISMATCH"


def test_key_release_for_other_reader(sealed: tuple[bytes, bytes, bytes]) -> None:
    wrap_bytes, wrap_h = make_wrap_blob(RID, sealed[2], [DOCTOR.public_key])
    with pytest.raises(BlobReadersError):
        check_blob_for_tx(release_tx(wrap_h, STRANGER.public_key), wrap_bytes)
    two, two_h = make_wrap_blob(RID, sealed[2], [DOCTOR.public_key, STRANGER.public_key])
    with pytest.raises(BlobReadersError):
        check_blob_for_tx(release_tx(two_h, DOCTOR.public_key), two)


def test_wrong_record_id(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, h, _ = sealed
    with pytest.raises(BlobRecordError) as info:
        check_blob_for_tx(anchor_tx(h, READERS, record_id=b"\x02" * 16), data)
    assert info.value.code == "BLOB_RECORD_MISMATCH"
    wrap_bytes, wrap_h = make_wrap_blob(RID, sealed[2], [DOCTOR.public_key])
    with pytest.raises(BlobRecordError):
        check_blob_for_tx(release_tx(wrap_h, DOCTOR.public_key, b"\x03" * 16), wrap_bytes)


def test_wrong_blob_kind(sealed: tuple[bytes, bytes, bytes]) -> None:
    data, h, record_key = sealed
    wrap_bytes, wrap_h = make_wrap_blob(RID, record_key, READERS)
    with pytest.raises(BlobMismatchError):
        check_blob_for_tx(anchor_tx(wrap_h, READERS), wrap_bytes)
    with pytest.raises(BlobMismatchError):
        check_blob_for_tx(release_tx(h, READERS[0]), data)
    with pytest.raises(DecodeError):
        codec.decode(wrap_bytes, RecordBlob)


# --- decode_blob structure ------------------------------------------------------------

WRAP_A = KeyWrap(b"\x0a" * 32, b"w" * WRAP_SIZE)
WRAP_B = KeyWrap(b"\x0b" * 32, b"w" * WRAP_SIZE)


@pytest.mark.parametrize(
    "blob",
    [
        RecordBlob(RID, b"n" * 23, b"c" * 16, [WRAP_A]),
        RecordBlob(RID, b"n" * 24, b"c" * 15, [WRAP_A]),
        RecordBlob(RID, b"n" * 24, b"c" * 16, []),
        RecordBlob(RID, b"n" * 24, b"c" * 16, [WRAP_B, WRAP_A]),
        RecordBlob(RID, b"n" * 24, b"c" * 16, [WRAP_A, WRAP_A]),
        RecordBlob(RID, b"n" * 24, b"c" * 16, [KeyWrap(b"\x0a" * 31, b"w" * WRAP_SIZE)]),
        RecordBlob(RID, b"n" * 24, b"c" * 16, [KeyWrap(b"\x0a" * 32, b"w" * 79)]),
        WrapBlob(RID, []),
        WrapBlob(RID, [WRAP_B, WRAP_A]),
    ],
    ids=[
        "short-nonce",
        "short-ciphertext",
        "no-wraps",
        "unsorted",
        "duplicate",
        "short-reader",
        "short-wrap",
        "wrapblob-empty",
        "wrapblob-unsorted",
    ],
)
def test_structurally_invalid_blob(blob: RecordBlob | WrapBlob) -> None:
    with pytest.raises(InvalidBlobError) as info:
        decode_blob(codec.encode(blob))
    assert info.value.code == "INVALID_BLOB"


def test_valid_structure_decodes() -> None:
    blob = RecordBlob(RID, b"n" * 24, b"c" * 16, [WRAP_A, WRAP_B])
    assert decode_blob(codec.encode(blob)) == blob


def test_non_canonical_blob() -> None:
    blob = WrapBlob(RID, [WRAP_A])
    data = codec.encode(blob)
    assert data[:2] == b"\x93\x02"  # fixarray(3), tag 2
    wider = b"\xdc\x00\x03" + data[1:]  # the same array with an array16 header
    with pytest.raises(NonCanonicalError):
        decode_blob(wider)


VALID = codec.encode(RecordBlob(RID, b"n" * 24, b"c" * 16, [WRAP_A, WRAP_B]))


@given(
    st.one_of(
        st.binary(max_size=300),
        # a valid blob with a few bytes overwritten reaches deeper into the decoder
        st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=4).map(
            lambda edits: bytes(dict(edits).get(i, b) for i, b in enumerate(VALID))
        ),
    )
)
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    try:
        blob = decode_blob(data)
    except DecodeError as exc:
        assert exc.code in {"MALFORMED", "NON_CANONICAL", "INVALID_BLOB"}
    else:
        assert codec.encode(blob) == data
