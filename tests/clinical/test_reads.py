"""Node-side record and audit reads over a real store: nothing leaves before its audit entry."""

from __future__ import annotations

import pytest

from ledger import envelope
from ledger.blob import make_wrap_blob
from ledger.errors import ConsentDeniedError, ErasedError, NotFoundError, UnauthorizedError
from ledger.tx import EraseRecord, KeyRelease, RevokeConsent
from node.api.errors import status_of
from node.clinical.errors import (
    AccessExpiredError,
    AccessPendingError,
    AccessRequiredError,
    KeyReleasePendingError,
)
from node.clinical.index import PatientIndex
from node.clinical.reads import ClinicalReads
from tests.clinical.helpers import World

PLAIN = b'{"resourceType":"Observation","note":[{"text":"MARKER-reads"}]}'


class Clock:
    def __init__(self, world: World) -> None:
        self.world = world
        self.offset = 0

    def __call__(self) -> int:
        return self.world.chain.time_ms + self.offset


@pytest.fixture
def world() -> World:
    return World()


def reads_for(world: World, clock: Clock | None = None) -> ClinicalReads:
    index = PatientIndex()
    index.catch_up(world.chain.store)
    return ClinicalReads(
        world.chain.store,
        world.chain.genesis.policy.break_glass(),
        index,
        clock_ms=clock or Clock(world),
        access_ttl_ms=60_000,
    )


def decrypt(answer: dict[str, object], reader: object, rid: bytes) -> bytes:
    from ledger.keys import KeyPair

    assert isinstance(reader, KeyPair)
    key = envelope.unwrap_key(answer["sealed_key"], reader)  # type: ignore[arg-type]
    return envelope.decrypt_record(key, answer["nonce"], answer["ciphertext"], rid)  # type: ignore[arg-type]


def release(world: World, rid: bytes, reader: bytes) -> None:
    blob, bh = make_wrap_blob(rid, b"k" * 32, [reader])  # key content irrelevant to apply
    _, code = world.chain.run(world.a, KeyRelease(rid, reader, bh), blob)
    assert code == "OK"


def test_patient_reads_after_the_access_commits(world: World) -> None:
    rid = world.anchor(PLAIN)
    reads = reads_for(world)
    with pytest.raises(AccessRequiredError):
        reads.read_record(rid, world.p.public_key, None)
    txh, code = world.access(world.p, rid)
    assert code == "OK"
    answer = reads.read_record(rid, world.p.public_key, txh)
    assert decrypt(answer, world.p, rid) == PLAIN
    assert PLAIN not in answer["ciphertext"]
    assert answer["access"] == {"tx": txh, "height": world.chain.height, "emergency": None}


def test_custodian_clinician_without_wrap_waits_for_release(world: World) -> None:
    rid = world.anchor(PLAIN)
    txh, code = world.access(world.d1, rid)
    assert code == "OK"
    with pytest.raises(KeyReleasePendingError) as err:
        reads_for(world).read_record(rid, world.d1.public_key, txh)
    assert status_of(err.value) == 503


def test_denied_read_is_refused_and_audited(world: World) -> None:
    rid = world.anchor(PLAIN)
    txh, code = world.access(world.d2, rid)
    assert code == "CONSENT_DENIED"
    reads = reads_for(world)
    with pytest.raises(ConsentDeniedError) as err:
        reads.read_record(rid, world.d2.public_key, txh)
    assert status_of(err.value) == 403
    log = reads.patient_audit(world.p.public_key, world.p.public_key)
    (entry,) = log["entries"]
    assert entry["reader"] == world.d2.public_key
    assert entry["outcome"] == "CONSENT_DENIED" and entry["reason"] == "NO_CONSENT"
    assert entry["reader_org"] == world.b.public_key
    assert entry["category"] == "vital-signs"
    assert entry["time_ms"] == world.chain.time_ms


def test_consent_then_release_then_revoke(world: World) -> None:
    rid = world.anchor(PLAIN)
    cid = world.grant(world.d2.public_key)
    txh, code = world.access(world.d2, rid)
    assert code == "OK"
    with pytest.raises(KeyReleasePendingError):
        reads_for(world).read_record(rid, world.d2.public_key, txh)
    # the real release: A unwraps its own wrap and re-wraps for D2
    from ledger.blob import RecordBlob, decode_blob
    from ledger.state import StateView

    meta = StateView(world.chain.store).record(rid)
    assert meta is not None
    raw = world.chain.store.get_blob(meta.blob_hash)
    assert raw is not None
    blob = decode_blob(raw)
    assert isinstance(blob, RecordBlob)
    own = next(w for w in blob.wraps if w.reader == world.a.public_key)
    key = envelope.unwrap_key(own.sealed_key, world.a)
    wrap, bh = make_wrap_blob(rid, key, [world.d2.public_key])
    _, code = world.chain.run(world.a, KeyRelease(rid, world.d2.public_key, bh), wrap)
    assert code == "OK"
    answer = reads_for(world).read_record(rid, world.d2.public_key, txh)
    assert decrypt(answer, world.d2, rid) == PLAIN
    # revocation closes the door for the old access tx too
    _, code = world.chain.run(world.p, RevokeConsent(cid))
    assert code == "OK"
    with pytest.raises(ConsentDeniedError):
        reads_for(world).read_record(rid, world.d2.public_key, txh)
    _, code = world.access(world.d2, rid)
    assert code == "CONSENT_DENIED"


def test_access_tx_must_be_the_readers_own_and_fresh(world: World) -> None:
    rid = world.anchor(PLAIN)
    other = world.anchor(PLAIN)
    txh, _ = world.access(world.p, rid)
    clock = Clock(world)
    reads = reads_for(world, clock)
    with pytest.raises(AccessRequiredError):
        reads.read_record(rid, world.d1.public_key, txh)  # someone else's access
    with pytest.raises(AccessRequiredError):
        reads.read_record(other, world.p.public_key, txh)  # another record
    with pytest.raises(AccessPendingError):
        reads.read_record(rid, world.p.public_key, b"\x01" * 32)
    clock.offset = 61_000
    with pytest.raises(AccessExpiredError):
        reads.read_record(rid, world.p.public_key, txh)


def test_emergency_access_is_flagged_and_released_only_after_commit(world: World) -> None:
    rid = world.anchor(PLAIN)
    txh, code = world.access(world.d3, rid, emergency="ETREAT")
    assert code == "OK"
    reads = reads_for(world)
    with pytest.raises(KeyReleasePendingError):
        reads.read_record(rid, world.d3.public_key, txh)
    release(world, rid, world.d3.public_key)
    assert reads_for(world).read_record(rid, world.d3.public_key, txh)["access"]["emergency"] == (
        "ETREAT"
    )
    log = reads.patient_audit(world.p.public_key, world.a.public_key)  # the hospital may read it
    (entry,) = log["entries"]
    assert entry["emergency"] is True and entry["reason"] == "BREAK_GLASS"
    assert entry["emergency_reason"] == "ETREAT"


def test_erased_record_is_gone(world: World) -> None:
    rid = world.anchor(PLAIN)
    amended = world.anchor(PLAIN + b" ", supersedes=rid)
    txh, _ = world.access(world.p, rid)
    _, code = world.chain.run(world.p, EraseRecord(amended))
    assert code == "OK"
    reads = reads_for(world)
    for r in (rid, amended):
        with pytest.raises(ErasedError) as err:
            reads.read_record(r, world.p.public_key, txh)
        assert status_of(err.value) == 410
    with pytest.raises(NotFoundError):
        reads.read_record(b"\x09" * 16, world.p.public_key, txh)


def test_audit_visibility_and_consent_listing(world: World) -> None:
    rid = world.anchor(PLAIN)
    cid = world.grant(world.d2.public_key)
    world.access(world.d2, rid)
    reads = reads_for(world)
    for outsider in (world.d2, world.b, world.d1):
        with pytest.raises(UnauthorizedError):
            reads.patient_audit(world.p.public_key, outsider.public_key)
    with pytest.raises(NotFoundError):
        reads.patient_audit(world.d2.public_key, world.d2.public_key)
    log = reads.patient_audit(world.p.public_key, world.p.public_key)
    assert [c["consent_id"] for c in log["consents"]] == [cid]
    assert log["entries"][0]["consent_id"] == cid
