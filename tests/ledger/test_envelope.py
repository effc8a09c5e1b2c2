"""Envelope encryption: round trip, reader binding, record-id binding, tampering."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.envelope import (
    NONCE_SIZE,
    RECORD_KEY_SIZE,
    WRAP_SIZE,
    decrypt_record,
    encrypt_record,
    unwrap_key,
    wrap_key,
)
from ledger.errors import DecryptionError, EnvelopeError, InvalidKeyError, LedgerError
from ledger.keys import KeyPair

ALICE = KeyPair.from_seed(b"A" * 32)
BOB = KeyPair.from_seed(b"B" * 32)
RID = b"record-0001"
MARKER = b"PATIENT-MARKER-Jane-Doe-1970-01-01"


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


@given(st.binary(max_size=2048), st.binary(min_size=1, max_size=64))
def test_round_trip(plaintext: bytes, record_id: bytes) -> None:
    key, nonce, ct = encrypt_record(plaintext, record_id)
    assert len(key) == RECORD_KEY_SIZE and len(nonce) == NONCE_SIZE
    wrap = wrap_key(key, ALICE.public_key)
    assert len(wrap) == WRAP_SIZE
    assert decrypt_record(unwrap_key(wrap, ALICE), nonce, ct, record_id) == plaintext


def test_fresh_key_and_nonce_per_record() -> None:
    a = encrypt_record(MARKER, RID)
    b = encrypt_record(MARKER, RID)
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]
    assert MARKER not in a[2]


def test_wrong_reader_cannot_unwrap() -> None:
    key, _, _ = encrypt_record(MARKER, RID)
    wrap = wrap_key(key, ALICE.public_key)
    with pytest.raises(DecryptionError) as info:
        unwrap_key(wrap, BOB)
    assert info.value.code == "DECRYPTION_FAILED"


def test_record_id_is_bound() -> None:
    key, nonce, ct = encrypt_record(MARKER, RID)
    with pytest.raises(DecryptionError):
        decrypt_record(key, nonce, ct, b"record-0002")
    with pytest.raises(DecryptionError):
        decrypt_record(key, nonce, ct, RID + b"\x00")


def test_wrong_key_fails() -> None:
    _, nonce, ct = encrypt_record(MARKER, RID)
    other, _, _ = encrypt_record(MARKER, RID)
    with pytest.raises(DecryptionError):
        decrypt_record(other, nonce, ct, RID)


@given(st.integers(0, 10_000), st.integers(0, 7))
def test_tampered_ciphertext_nonce_or_wrap_fails(pos: int, bit: int) -> None:
    key, nonce, ct = encrypt_record(MARKER, RID)
    wrap = wrap_key(key, ALICE.public_key)
    with pytest.raises(DecryptionError):
        decrypt_record(key, nonce, _flip(ct, pos, bit), RID)
    with pytest.raises(DecryptionError):
        decrypt_record(key, _flip(nonce, pos, bit), ct, RID)
    with pytest.raises(DecryptionError):
        unwrap_key(_flip(wrap, pos, bit), ALICE)


@pytest.mark.parametrize(
    ("key", "nonce", "ct"),
    [
        (b"k" * 31, b"n" * 24, b"c" * 32),
        (b"k" * 32, b"n" * 23, b"c" * 32),
        (b"k" * 32, b"n" * 24, b"c" * 15),
        (b"k" * 32, b"n" * 24, b""),
    ],
)
def test_wrong_sizes_are_typed_errors(key: bytes, nonce: bytes, ct: bytes) -> None:
    with pytest.raises(DecryptionError):
        decrypt_record(key, nonce, ct, RID)


@pytest.mark.parametrize("wrap", [b"", b"w" * 47, b"w" * 79, b"w" * 81, b"\x00" * 80])
def test_malformed_wrap_is_typed_error(wrap: bytes) -> None:
    with pytest.raises(DecryptionError):
        unwrap_key(wrap, ALICE)


@pytest.mark.parametrize(
    "reader",
    [b"", b"\x00" * 31, b"\x01" + b"\x00" * 31, b"\xff" * 32],
    ids=["empty", "short", "small-order", "not-a-point"],
)
def test_invalid_reader_key_is_typed_error(reader: bytes) -> None:
    key, _, _ = encrypt_record(MARKER, RID)
    with pytest.raises(InvalidKeyError) as info:
        wrap_key(key, reader)
    assert info.value.code == "INVALID_KEY"


def test_wrap_rejects_wrong_key_size() -> None:
    with pytest.raises(InvalidKeyError):
        wrap_key(b"k" * 16, ALICE.public_key)


def test_errors_never_contain_secrets_or_plaintext() -> None:
    key, nonce, ct = encrypt_record(MARKER, RID)
    wrap = wrap_key(key, ALICE.public_key)
    secrets = [key, ALICE.seed, BOB.seed, MARKER]
    errors: list[LedgerError] = []
    calls: tuple[Callable[[], bytes], ...] = (
        lambda: unwrap_key(wrap, BOB),
        lambda: decrypt_record(key, nonce, ct, b"other"),
        lambda: decrypt_record(key, nonce, _flip(ct, 3), RID),
        lambda: wrap_key(key, b"\xff" * 32),
    )
    for call in calls:
        with pytest.raises(EnvelopeError) as info:
            call()
        errors.append(info.value)
    for err in errors:
        text = str(err) + repr(err) + err.message
        for s in secrets:
            assert s.hex() not in text
            assert s.decode("latin-1") not in text
            assert repr(s)[2:-1] not in text
