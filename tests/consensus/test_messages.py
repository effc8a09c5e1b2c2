"""Wire messages: canonical encoding, validate_basic, signature domains."""

from __future__ import annotations

import pytest

from consensus.errors import BadMessageError, RemoteProtocolError
from consensus.messages import (
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    CommittedBlock,
    Envelope,
    NewView,
    Prepare,
    PrePrepare,
    SignedPart,
    SignedViewChange,
    StateRequest,
    StateResponse,
    ViewChange,
    VoteSig,
    decode_envelope,
    sign,
    sign_bytes,
)
from consensus.validators import ValidatorSet
from ledger import codec
from ledger.hashing import SIGN_CONSENSUS

from .helpers import KEYS, VS, signed

D = bytes(range(32))


def test_roundtrip_every_payload() -> None:
    gen = CheckpointProof(0, D, bytes(32), [])
    payloads = [
        PrePrepare(0, 1, D, b"block"),
        Prepare(3, 7, D, D),
        Commit(3, 7, D),
        Checkpoint(16, D, D),
        ViewChange(1, gen, None, []),
        StateRequest(1, 10),
    ]
    for p in payloads:
        data = signed(0, p)
        env = decode_envelope(data, 1 << 20)
        assert env.payload == p
        assert codec.encode(env) == data
        VS.check_envelope(env)


def test_signature_binds_chain_and_payload() -> None:
    env = sign(KEYS[0], "chain-a", Prepare(0, 1, D, D))
    other = ValidatorSet("chain-b", VS.validators)
    assert not other.verify_signature(env.sender, env.payload, env.signature)
    assert not VS.verify_signature(env.sender, Prepare(0, 2, D, D), env.signature)
    assert sign_bytes("c", Prepare(0, 1, D, D)).startswith(SIGN_CONSENSUS)
    assert sign_bytes("c", Prepare(0, 1, D, D)) == SIGN_CONSENSUS + codec.encode(
        SignedPart("c", Prepare(0, 1, D, D))
    )


@pytest.mark.parametrize(
    "payload",
    [
        Prepare(-1, 1, D, D),
        Prepare(0, 0, D, D),
        Commit(0, 1, b"short"),
        Checkpoint(0, D, D),
        StateRequest(5, 4),
        ViewChange(0, CheckpointProof(0, D, D, []), None, []),
        NewView(2, [SignedViewChange(D, ViewChange(1, CheckpointProof(0, D, D, []), None, []),
                                     bytes(64))]),
        StateResponse([CommittedBlock(b"b", CommitCertificate(1, 0, D, [VoteSig(b"x", b"y")]))]),
    ],
)
def test_validate_basic_rejects(payload: object) -> None:
    data = signed(0, payload)  # type: ignore[arg-type]
    with pytest.raises(BadMessageError):
        decode_envelope(data, 1 << 20)


def test_size_limit_and_garbage_are_remote_errors() -> None:
    data = signed(0, PrePrepare(0, 1, D, b"x" * 1000))
    with pytest.raises(RemoteProtocolError):
        decode_envelope(data, 100)
    with pytest.raises(RemoteProtocolError):
        decode_envelope(b"\x93\x01\x02", 1 << 20)
    with pytest.raises(RemoteProtocolError):
        decode_envelope(data + b"\x00", 1 << 20)


def test_prepared_proof_must_be_above_checkpoint_and_below_view() -> None:
    from consensus.messages import PreparedCert

    cp = CheckpointProof(8, D, D, [])
    below = PreparedCert(0, 8, D, D, [])
    with pytest.raises(BadMessageError):
        decode_envelope(signed(0, ViewChange(1, cp, None, [below])), 1 << 20)
    future = PreparedCert(1, 9, D, D, [])
    with pytest.raises(BadMessageError):
        decode_envelope(signed(0, ViewChange(1, cp, None, [future])), 1 << 20)


def test_envelope_is_array_like() -> None:
    env = Envelope(KEYS[0].public_key, Prepare(0, 1, D, D), bytes(64))
    assert codec.decode(codec.encode(env), Envelope) == env


def test_view_change_committed_certificate_bounds_the_prepared_proofs() -> None:
    from consensus.messages import PreparedCert

    cp = CheckpointProof(8, D, D, [])
    cert = CommitCertificate(12, 0, D, [])
    at_checkpoint = CommitCertificate(8, 0, D, [])
    with pytest.raises(BadMessageError):
        decode_envelope(signed(0, ViewChange(1, cp, at_checkpoint, [])), 1 << 20)
    covered = PreparedCert(0, 12, D, D, [])  # final by the certificate: must not be listed
    with pytest.raises(BadMessageError):
        decode_envelope(signed(0, ViewChange(1, cp, cert, [covered])), 1 << 20)
    ok = ViewChange(1, cp, cert, [PreparedCert(0, 13, D, D, [])])
    assert decode_envelope(signed(0, ok), 1 << 20).payload == ok
