"""Stateless tx checks: each kind of bad input gets its own typed error."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from ledger import codec, keys, validate
from ledger.errors import (
    BadSignatureError,
    DecodeError,
    InvalidTxError,
    NonCanonicalError,
    TooLargeError,
    WrongChainError,
)
from ledger.keys import KeyPair
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    KeyRelease,
    RecordAccess,
    RegisterClinician,
    RegisterOrganization,
    RegisterPatient,
    RevokeConsent,
    Tx,
    ValidatorSetChange,
    make_tx,
)
from ledger.validate import Limits, SigCache, check_tx_bytes

CHAIN = "medledger-test"
SENDER = KeyPair.from_seed(b"\x01" * 32)
PAT = KeyPair.from_seed(b"\x02" * 32).public_key
ORG = KeyPair.from_seed(b"\x03" * 32).public_key
K = b"\x07" * 32
ID = b"\x05" * 16
H = b"\x09" * 32


def encoded(body: Body, *, chain: str = CHAIN, nonce: int = 0) -> bytes:
    return codec.encode(make_tx(SENDER, chain, nonce, body))


def good_anchor(**changes: object) -> AnchorRecord:
    body = AnchorRecord(ID, PAT, "lab", ORG, H, sorted([PAT, ORG]))
    return msgspec.structs.replace(body, **changes)


def good_grant(**changes: object) -> GrantConsent:
    body = GrantConsent(ID, K, ["lab"], [], "TREAT", 0, 10, False)
    return msgspec.structs.replace(body, **changes)


VALID_BODIES: list[Body] = [
    RegisterOrganization(K, "Hospital"),
    RegisterClinician(K, "Dr Who"),
    RegisterPatient(K),
    good_anchor(),
    good_anchor(supersedes=b"\x06" * 20),
    good_grant(),
    good_grant(categories=[], record_ids=[ID, b"\x06" * 32]),
    RevokeConsent(ID),
    RecordAccess(ID, "TREAT"),
    RecordAccess(ID, "TREAT", consent_id=ID),
    RecordAccess(ID, "TREAT", emergency_reason="ETREAT"),
    KeyRelease(ID, K, H),
    EraseRecord(ID),
    ValidatorSetChange([K], []),
]


@pytest.mark.parametrize("body", VALID_BODIES, ids=lambda b: type(b).__name__)
def test_valid_tx_passes_and_returns_its_hash(body: Body) -> None:
    data = encoded(body)
    tx, txh = check_tx_bytes(data, CHAIN)
    assert tx.body == body
    assert txh == tx.hash()


def test_oversized_rejected_before_decoding() -> None:
    limits = Limits(max_tx_bytes=100)
    with pytest.raises(TooLargeError):
        check_tx_bytes(b"\xff" * 101, CHAIN, limits)  # garbage: never parsed
    with pytest.raises(TooLargeError):
        check_tx_bytes(b"\x00" * (64 * 1024 + 1), CHAIN)
    big = encoded(RegisterClinician(K, "x"))
    with pytest.raises(TooLargeError):
        check_tx_bytes(big, CHAIN, Limits(max_tx_bytes=len(big) - 1))


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xc1", b"\x95\x01\x02", b"\x91\xa1x" * 3])
def test_malformed_bytes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        check_tx_bytes(data, CHAIN)


def test_non_canonical_encoding() -> None:
    data = encoded(RegisterPatient(K))
    # the nonce 0 as a uint8 (0xcc 0x00) instead of a fixint: same value, other bytes
    tx = codec.decode(data, Tx)
    head = codec.encode([tx.chain_id, tx.sender])
    rest = codec.encode([tx.body, tx.signature])
    padded = b"\x95" + head[1:] + b"\xcc\x00" + rest[1:]
    assert msgspec.msgpack.decode(padded) == msgspec.msgpack.decode(data)
    with pytest.raises(NonCanonicalError):
        check_tx_bytes(padded, CHAIN)


def test_wrong_chain() -> None:
    with pytest.raises(WrongChainError):
        check_tx_bytes(encoded(RegisterPatient(K), chain="other"), CHAIN)


def test_bad_signature() -> None:
    tx = make_tx(SENDER, CHAIN, 0, RegisterPatient(K))
    for i in (0, 31, 63):
        sig = bytearray(tx.signature)
        sig[i] ^= 0x01
        forged = Tx(tx.chain_id, tx.sender, tx.nonce, tx.body, bytes(sig))
        with pytest.raises(BadSignatureError):
            check_tx_bytes(codec.encode(forged), CHAIN)
    # a valid signature over other bytes (another nonce) does not transfer
    other = make_tx(SENDER, CHAIN, 1, RegisterPatient(K))
    moved = Tx(tx.chain_id, tx.sender, tx.nonce, tx.body, other.signature)
    with pytest.raises(BadSignatureError):
        check_tx_bytes(codec.encode(moved), CHAIN)


def test_check_order_chain_before_shape_before_signature() -> None:
    tx = make_tx(SENDER, "other", 0, RegisterPatient(b"short"))
    bad = Tx(tx.chain_id, tx.sender, tx.nonce, tx.body, b"\x00" * 64)
    with pytest.raises(WrongChainError):
        check_tx_bytes(codec.encode(bad), CHAIN)
    bad = Tx(CHAIN, tx.sender, tx.nonce, tx.body, b"\x00" * 64)
    with pytest.raises(InvalidTxError) as info:
        check_tx_bytes(codec.encode(bad), CHAIN)
    assert type(info.value) is InvalidTxError


BAD_SHAPES: list[tuple[str, Body]] = [
    ("clinician", RegisterClinician(b"\x01" * 31, "Dr")),
    ("display_name", RegisterClinician(K, "")),
    ("display_name", RegisterClinician(K, "x" * 65)),
    ("display_name", RegisterClinician(K, "line\nbreak")),
    ("org", RegisterOrganization(K + b"\x00", "H")),
    ("patient", RegisterPatient(b"")),
    ("record_id", good_anchor(record_id=b"\x01" * 15)),
    ("record_id", good_anchor(record_id=b"\x01" * 33)),
    ("blob_hash", good_anchor(blob_hash=b"\x01" * 31)),
    ("category", good_anchor(category="")),
    ("readers", good_anchor(readers=[])),
    ("readers", good_anchor(readers=sorted([PAT, ORG], reverse=True))),
    ("readers", good_anchor(readers=[PAT, PAT, ORG])),
    ("readers", good_anchor(readers=[PAT])),
    ("readers", good_anchor(readers=sorted([PAT, ORG, b"\x01" * 31]))),
    ("readers", good_anchor(readers=sorted([PAT, ORG] + [bytes([i]) * 32 for i in range(64)]))),
    ("supersedes", good_anchor(supersedes=ID)),
    ("supersedes", good_anchor(supersedes=b"\x01")),
    ("consent_id", good_grant(consent_id=b"")),
    ("grantee", good_grant(grantee=b"\x01" * 33)),
    ("categories", good_grant(categories=["b", "a"])),
    ("categories", good_grant(categories=["a", "a"])),
    ("categories", good_grant(categories=[], record_ids=[])),
    ("categories", good_grant(categories=[""])),
    ("record_ids", good_grant(record_ids=[b"\x02" * 16, b"\x01" * 16])),
    ("record_ids", good_grant(record_ids=[b"\x01" * 8])),
    ("purpose", good_grant(purpose="")),
    ("not_after_ms", good_grant(not_before_ms=10, not_after_ms=10)),
    ("not_after_ms", good_grant(not_before_ms=-1)),
    ("not_after_ms", good_grant(not_after_ms=2**63)),
    ("consent_id", RevokeConsent(b"\x01" * 40)),
    ("emergency_reason", RecordAccess(ID, "T", consent_id=ID, emergency_reason="BTG")),
    ("emergency_reason", RecordAccess(ID, "T", emergency_reason="")),
    ("purpose", RecordAccess(ID, "")),
    ("consent_id", RecordAccess(ID, "T", consent_id=b"\x01")),
    ("reader", KeyRelease(ID, b"\x01", H)),
    ("wrap_blob_hash", KeyRelease(ID, K, b"")),
    ("record_id", EraseRecord(b"")),
    ("add", ValidatorSetChange([K, K], [])),
    ("remove", ValidatorSetChange([], [b"\x01"])),
]


@pytest.mark.parametrize(("field", "body"), BAD_SHAPES, ids=[f for f, _ in BAD_SHAPES])
def test_bad_shape_names_the_field(field: str, body: Body) -> None:
    with pytest.raises(InvalidTxError) as info:
        check_tx_bytes(encoded(body), CHAIN)
    assert type(info.value) is InvalidTxError
    assert info.value.message.startswith(field + ":")


def test_envelope_fields() -> None:
    long_chain = "c" * 65
    with pytest.raises(InvalidTxError, match="chain_id"):
        check_tx_bytes(encoded(RegisterPatient(K), chain=long_chain), long_chain)
    tx = make_tx(SENDER, CHAIN, 0, RegisterPatient(K))
    for bad, field in (
        (Tx(CHAIN, b"\x01" * 31, 0, tx.body, tx.signature), "sender"),
        (Tx(CHAIN, tx.sender, -1, tx.body, tx.signature), "nonce"),
        (Tx(CHAIN, tx.sender, 0, tx.body, tx.signature[:63]), "signature"),
    ):
        with pytest.raises(InvalidTxError, match=field):
            check_tx_bytes(codec.encode(bad), CHAIN)


def test_sig_cache_verifies_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = keys.verify

    def counting(key: bytes, message: bytes, sig: bytes) -> bool:
        calls.append(message)
        return real(key, message, sig)

    monkeypatch.setattr(validate, "verify", counting)
    cache = SigCache(capacity=4)
    data = encoded(RegisterPatient(K))
    for _ in range(3):
        check_tx_bytes(data, CHAIN, verified=cache)
    assert len(calls) == 1
    # a failing signature is never cached, so it is checked (and refused) every time
    tx = codec.decode(data, Tx)
    forged = codec.encode(Tx(tx.chain_id, tx.sender, 1, tx.body, tx.signature))
    for _ in range(2):
        with pytest.raises(BadSignatureError):
            check_tx_bytes(forged, CHAIN, verified=cache)
    assert len(calls) == 3
    assert len(cache) == 1


def test_sig_cache_is_bounded_lru() -> None:
    cache = SigCache(capacity=3)
    hashes = [hashlib.sha256(bytes([i])).digest() for i in range(5)]
    for h in hashes[:3]:
        cache.add(h)
    assert hashes[0] in cache  # touch: now most recent
    cache.add(hashes[3])  # evicts hashes[1], the least recently used
    assert len(cache) == 3
    assert hashes[1] not in cache
    assert all(h in cache for h in (hashes[0], hashes[2], hashes[3]))
    with pytest.raises(ValueError):
        SigCache(capacity=0)
