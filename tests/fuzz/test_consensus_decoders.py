"""Fuzz what a peer can send the PBFT core: envelopes, signed wild payloads, state responses.

Contract: :func:`consensus.messages.decode_envelope` ends in an envelope or a
:class:`~consensus.errors.RemoteProtocolError`; :meth:`consensus.core.Replica.receive`
never raises at all (a bad message is dropped and counted). Inputs are raw and
mutated envelopes (whose signatures then fail), and — to get behind the
signature check, as a Byzantine validator would — payloads with wild fields
*correctly signed* by a validator key, including state responses that mix
real commit certificates with altered blocks.
"""

from __future__ import annotations

import dataclasses

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from consensus.core import Replica
from consensus.errors import RemoteProtocolError
from consensus.messages import (
    BlockOffer,
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    CommittedBlock,
    NewView,
    Payload,
    Prepare,
    PrePrepare,
    StateRequest,
    StateResponse,
    Status,
    ViewChange,
    VoteSig,
    decode_envelope,
    sign,
)
from consensus.testing import CHAIN_ID
from tests.consensus.helpers import GENESIS, KEYS, block, make_replica, signed
from tests.fuzz.harness import any_input, mutated, run_case, structs

MAX_MESSAGE = 1 << 20
ME = 1  # the replica under test is validator 1; validator 0 is the primary of view 0


def _chain(length: int) -> list[tuple[bytes, bytes]]:
    out = []
    parent = GENESIS
    for h in range(1, length + 1):
        data, digest = block(h, parent)
        out.append((data, digest))
        parent = digest
    return out


CHAIN = _chain(3)


def certificate(
    height: int, digest: bytes, signers: tuple[int, ...] = (0, 2, 3)
) -> CommitCertificate:
    sigs = [
        VoteSig(KEYS[i].public_key, sign(KEYS[i], CHAIN_ID, Commit(0, height, digest)).signature)
        for i in signers
    ]
    sigs.sort(key=lambda s: s.validator)
    return CommitCertificate(height, 0, digest, sigs)


CERTS = [certificate(h, digest) for h, (_, digest) in enumerate(CHAIN, start=1)]
BLOCK1, DIGEST1 = CHAIN[0]
SEED_PAYLOADS: list[Payload] = [
    PrePrepare(0, 1, DIGEST1, BLOCK1),
    Prepare(0, 1, DIGEST1, GENESIS),
    Commit(0, 1, DIGEST1),
    Checkpoint(8, DIGEST1, bytes(32)),
    StateRequest(1, 3),
    StateResponse([CommittedBlock(b, c) for (b, _), c in zip(CHAIN, CERTS, strict=True)]),
    Status(3, 0),
    BlockOffer(1, 1, BLOCK1),
    ViewChange(1, CheckpointProof(0, GENESIS, bytes(32), []), CERTS[0], []),
]
SEEDS = [signed(i, p) for p in SEED_PAYLOADS for i in (0, 2)]


def receive_outcome(replica: Replica, data: bytes) -> str:
    """Feed ``data``; name the counter that moved (how the replica judged it)."""
    before = dataclasses.asdict(replica.statistics())
    replica.receive(data)
    after = dataclasses.asdict(replica.statistics())
    for name in (
        "malformed",
        "invalid_signatures",
        "non_validator",
        "invalid_messages",
        "invalid_proposals",
        "forged_certificates",
        "dropped_out_of_window",
        "dropped_over_cap",
    ):
        if after[name] != before[name]:
            return name
    if after["committed_height"] != before["committed_height"]:
        return "committed"
    return "handled"


def _label(outcome: str) -> str:
    return outcome


@given(data=any_input(SEEDS, max_raw=1024))
def test_decode_envelope(data: bytes) -> None:
    run_case(
        "consensus.decode_envelope",
        lambda: decode_envelope(data, MAX_MESSAGE),
        allowed=(RemoteProtocolError,),
    )


@given(data=any_input(SEEDS, max_raw=1024))
def test_receive_bytes(data: bytes) -> None:
    replica, _ = make_replica(ME)
    run_case(
        "consensus.Replica.receive[bytes]",
        lambda: receive_outcome(replica, data),
        allowed=(),
        label=_label,
    )


SIGNED_PAYLOADS = st.one_of(
    structs(PrePrepare | Prepare | Commit | Checkpoint | StateRequest | Status | BlockOffer),
    structs(ViewChange | NewView),
    st.sampled_from(SEED_PAYLOADS),
)


@given(payload=SIGNED_PAYLOADS, sender=st.sampled_from([0, 2, 3]))
def test_receive_signed_wild_payloads(payload: Payload, sender: int) -> None:
    """A Byzantine validator signs whatever it likes: still dropped or handled, never a crash."""
    replica, _ = make_replica(ME)
    data = signed(sender, payload)
    run_case(
        "consensus.Replica.receive[signed]",
        lambda: receive_outcome(replica, data),
        allowed=(),
        label=_label,
    )


@st.composite
def state_responses(draw: st.DrawFn) -> StateResponse:
    """Real certificates beside altered blocks, altered certificates beside real blocks."""
    blocks = []
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(CHAIN) - 1))
        data = CHAIN[i][0]
        cert = CERTS[i]
        choice = draw(st.integers(0, 4))
        if choice == 0:
            data = draw(mutated([data]))
        elif choice == 1:
            cert = draw(structs(CommitCertificate))
        elif choice == 2:
            cert = msgspec.structs.replace(
                cert, height=draw(st.integers(0, 5)), view=draw(st.integers(0, 2))
            )
        elif choice == 3:
            cert = msgspec.structs.replace(cert, commits=draw(st.permutations(cert.commits))[:2])
        blocks.append(CommittedBlock(data, cert))
    return StateResponse(blocks)


@given(response=state_responses(), sender=st.sampled_from([0, 2, 3]))
def test_receive_state_responses(response: StateResponse, sender: int) -> None:
    replica, _ = make_replica(ME)
    data = signed(sender, response)
    outcome = run_case(
        "consensus.Replica.receive[state_response]",
        lambda: receive_outcome(replica, data),
        allowed=(),
        label=_label,
    )
    # Only blocks with a quorum certificate that matches them can ever be committed.
    assert replica.committed <= len(CHAIN)
    if outcome == "committed":
        assert replica.app.digest_of(CHAIN[0][0]) is not None


def test_seed_state_response_commits() -> None:
    """The unmutated seed is accepted: the fuzzing starts from something that works."""
    replica, _ = make_replica(ME)
    assert receive_outcome(replica, signed(2, SEED_PAYLOADS[5])) == "committed"
    assert replica.committed == len(CHAIN)
