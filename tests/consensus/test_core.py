"""Directed tests of one sans-IO replica fed hand-made signed messages."""

from __future__ import annotations

from consensus.core import CommitBlock, Evidence, Persist, Replica, TimerKind
from consensus.messages import (
    Commit,
    CommitCertificate,
    CommittedBlock,
    Prepare,
    PrePrepare,
    StateResponse,
    Status,
    VoteSig,
    sign,
    sign_bytes,
)
from consensus.testing import CHAIN_ID, ToyApp, ToyStorage, sim_config
from consensus.wal import WalRecord
from ledger import codec

from .helpers import GENESIS, KEYS, VS, block, make_replica, sent, signed


def _wal(effects: list[object]) -> list[WalRecord]:
    return [e.record for e in effects if isinstance(e, Persist)]


def test_backup_prepares_a_valid_proposal_after_persisting() -> None:
    r, _ = make_replica(1)
    b, d = block(1, GENESIS)
    effects = r.receive(signed(0, PrePrepare(0, 1, d, b)))
    out = sent(effects)
    assert [type(e.payload) for e in out] == [Prepare]
    assert out[0].payload == Prepare(0, 1, d, GENESIS)
    # the vote is persisted before it is sent
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("Persist") < kinds.index("Broadcast")


def test_full_normal_case_commits_with_a_valid_certificate() -> None:
    r, _app = make_replica(1)
    b, d = block(1, GENESIS)
    r.receive(signed(0, PrePrepare(0, 1, d, b)))
    assert sent(r.receive(signed(0, Prepare(0, 1, d, GENESIS)))) == []
    # own + two others = quorum of 3: prepared, so COMMIT goes out
    out = sent(r.receive(signed(2, Prepare(0, 1, d, GENESIS))))
    assert [e.payload for e in out] == [Commit(0, 1, d)]
    effects = []
    for i in (0, 2):
        effects += r.receive(signed(i, Commit(0, 1, d)))
    done = [e for e in effects if isinstance(e, CommitBlock)]
    assert len(done) == 1 and done[0].height == 1 and done[0].digest == d
    done[0].certificate.verify(VS)
    assert r.committed == 1


def test_invalid_block_is_not_prepared() -> None:
    r, _ = make_replica(1)
    b, d = block(1, bytes(32))  # wrong parent
    out = sent(r.receive(signed(0, PrePrepare(0, 1, d, b))))
    assert out == []
    assert r.statistics().invalid_proposals == 1


def test_preprepare_from_non_primary_and_digest_mismatch_are_rejected() -> None:
    r, _ = make_replica(1)
    b, d = block(1, GENESIS)
    assert sent(r.receive(signed(2, PrePrepare(0, 1, d, b)))) == []
    assert sent(r.receive(signed(0, PrePrepare(0, 1, bytes(32), b)))) == []
    assert r.statistics().invalid_messages == 2


def test_non_validator_bad_signature_and_garbage_are_dropped_and_counted() -> None:
    from ledger.hashing import sha256
    from ledger.keys import KeyPair

    r, _ = make_replica(1)
    outsider = KeyPair.from_seed(sha256(b"outsider"))
    r.receive(codec.encode(sign(outsider, CHAIN_ID, Prepare(0, 1, bytes(32), GENESIS))))
    env = sign(KEYS[2], CHAIN_ID, Prepare(0, 1, bytes(32), GENESIS))
    forged = type(env)(env.sender, Prepare(0, 2, bytes(32), GENESIS), env.signature)
    r.receive(codec.encode(forged))
    r.receive(b"\xff\x00garbage")
    s = r.statistics()
    assert (s.non_validator, s.invalid_signatures, s.malformed) == (1, 1, 1)


def test_equivocation_is_kept_as_evidence() -> None:
    r, _ = make_replica(1)
    a, b = bytes([1]) * 32, bytes([2]) * 32
    r.receive(signed(2, Prepare(0, 1, a, GENESIS)))
    effects = r.receive(signed(2, Prepare(0, 1, b, GENESIS)))
    ev = [e for e in effects if isinstance(e, Evidence)]
    assert len(ev) == 1 and ev[0].validator == KEYS[2].public_key
    assert ev[0].first == signed(2, Prepare(0, 1, a, GENESIS))
    assert ev[0].second == signed(2, Prepare(0, 1, b, GENESIS))
    assert r.statistics().equivocations == 1
    # a duplicate of the first is neither evidence nor a second vote
    again = r.receive(signed(2, Prepare(0, 1, a, GENESIS)))
    assert not [e for e in again if isinstance(e, Evidence)]


def test_restart_from_wal_never_signs_a_conflicting_vote() -> None:
    app = ToyApp(ToyStorage())
    r = Replica(sim_config(), KEYS[1], VS, app, genesis_digest=GENESIS)
    wal = _wal(r.start())
    b1, d1 = block(1, GENESIS)
    effects = r.receive(signed(0, PrePrepare(0, 1, d1, b1)))
    wal += _wal(effects)
    first_prepare = next(e for e in sent(effects) if isinstance(e.payload, Prepare))
    # crash; restart from the WAL with a fresh app (mempool and caches lost)
    r2 = Replica(sim_config(), KEYS[1], VS, ToyApp(ToyStorage()), genesis_digest=GENESIS,
                 wal_records=wal)
    r2.start()
    b2, d2 = block(1, GENESIS, salt=9)
    out = sent(r2.receive(signed(0, PrePrepare(0, 1, d2, b2))))
    assert not [e for e in out if isinstance(e.payload, Prepare)]
    # the original proposal gets the identical, already-signed prepare again on resend
    resent = sent(r2.timeout(TimerKind.RESEND, _token(r2, TimerKind.RESEND)))
    resent += sent(r2.timeout(TimerKind.RESEND, _token(r2, TimerKind.RESEND)))
    assert first_prepare in resent


def _token(r: Replica, kind: TimerKind) -> int:
    return r._timer_tokens[kind]


def test_flood_of_future_messages_keeps_memory_bounded() -> None:
    r, _ = make_replica(1)
    d = bytes([7]) * 32
    for h in range(1, 3000, 29):
        for v in range(0, 60, 5):
            r.receive(signed(2, Prepare(v, h, d, GENESIS)))
            r.receive(signed(3, Commit(v, h, d)))
    s = r.statistics()
    assert r.buffered_heights() <= sim_config().effective_log_window
    assert s.dropped_out_of_window > 0 and s.dropped_over_cap > 0
    # per-sender cap: no slot holds more than the cap of votes from one sender
    cap = sim_config().max_votes_per_sender_slot
    assert all(n <= cap for s_ in r._slots.values() for n in s_.per_sender.values())


def _cert(height: int, digest: bytes, signers: list[int], view: int = 0) -> CommitCertificate:
    msg = sign_bytes(CHAIN_ID, Commit(view, height, digest))
    sigs = [VoteSig(KEYS[i].public_key, KEYS[i].sign(msg)) for i in signers]
    return CommitCertificate(height, view, digest, sigs)


def test_forged_certificates_are_rejected_and_a_real_one_accepted() -> None:
    r, _ = make_replica(1)
    b, d = block(1, GENESIS)
    too_few = _cert(1, d, [0, 2])
    garbage = CommitCertificate(
        1, 0, d, [VoteSig(KEYS[i].public_key, bytes(64)) for i in (0, 2, 3)]
    )
    wrong_digest = _cert(1, bytes(32), [0, 2, 3])
    duplicated = CommitCertificate(1, 0, d, [too_few.commits[0]] * 3)
    for cert in (too_few, garbage, wrong_digest, duplicated):
        effects = r.receive(signed(2, StateResponse([CommittedBlock(b, cert)])))
        assert not [e for e in effects if isinstance(e, CommitBlock)]
    assert r.statistics().forged_certificates == 4
    assert r.committed == 0
    effects = r.receive(signed(3, StateResponse([CommittedBlock(b, _cert(1, d, [0, 2, 3]))])))
    assert [e.height for e in effects if isinstance(e, CommitBlock)] == [1]


def test_status_from_a_lagging_peer_is_answered_with_blocks() -> None:
    r, app = make_replica(1)
    b, d = block(1, GENESIS)
    cert = _cert(1, d, [0, 2, 3])
    for e in r.receive(signed(3, StateResponse([CommittedBlock(b, cert)]))):
        if isinstance(e, CommitBlock):
            app.commit(e.height, e.block, codec.encode(e.certificate))
            r.executed(e.height, app.storage.state)
    out = sent(r.receive(signed(2, Status(0, 0))))
    resp = [e.payload for e in out if isinstance(e.payload, StateResponse)]
    assert resp and resp[0].blocks[0].certificate == cert


def _vc(i: int, view: int) -> bytes:
    from consensus.messages import CheckpointProof, ViewChange

    from .helpers import GENESIS

    return signed(i, ViewChange(view, CheckpointProof(0, GENESIS, bytes(32), []), None, []))


def test_one_bogus_view_change_does_not_move_a_replica_but_f_plus_1_do() -> None:
    from consensus.messages import ViewChange

    r, _ = make_replica(1)
    assert sent(r.receive(_vc(2, 5))) == []
    assert not r.in_view_change
    out = sent(r.receive(_vc(3, 7)))
    # f + 1 = 2 replicas want a view > 0: join the lowest view both are beyond
    vcs = [e.payload for e in out if isinstance(e.payload, ViewChange)]
    assert [v.new_view for v in vcs] == [5]
    assert r.in_view_change and r.vc_target == 5


def test_new_view_is_verified_by_recomputation() -> None:
    from consensus.messages import NewView, SignedViewChange, ViewChange

    from .helpers import GENESIS

    def svc(i: int) -> SignedViewChange:
        from consensus.messages import CheckpointProof, sign

        gen = CheckpointProof(0, GENESIS, bytes(32), [])
        env = sign(KEYS[i], CHAIN_ID, ViewChange(1, gen, None, []))
        assert isinstance(env.payload, ViewChange)
        return SignedViewChange(env.sender, env.payload, env.signature)

    r, _ = make_replica(2)
    # too few view changes
    r.receive(signed(1, NewView(1, [svc(0), svc(1)])))
    # not from the primary of view 1 (validator 1)
    r.receive(signed(3, NewView(1, [svc(0), svc(1), svc(3)])))
    # a forged view change inside
    bad = svc(3)
    bad = SignedViewChange(bad.sender, bad.view_change, bytes(64))
    r.receive(signed(1, NewView(1, [svc(0), svc(1), bad])))
    assert r.view == 0 and r.statistics().invalid_messages == 3
    r.receive(signed(1, NewView(1, [svc(0), svc(1), svc(3)])))
    assert r.view == 1 and not r.in_view_change


def test_conflicting_checkpoints_are_evidence_with_both_signed_messages() -> None:
    from consensus.messages import Checkpoint

    r, _ = make_replica(1)
    a = Checkpoint(8, bytes([1]) * 32, bytes([2]) * 32)
    b = Checkpoint(8, bytes([1]) * 32, bytes([3]) * 32)
    r.receive(signed(2, a))
    ev = [e for e in r.receive(signed(2, b)) if isinstance(e, Evidence)]
    assert len(ev) == 1
    assert ev[0].first == signed(2, a) and ev[0].second == signed(2, b)
