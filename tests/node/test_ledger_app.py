"""The consensus Application over the ledger: proposals, their checks, execution.

Two nodes' applications on in-memory stores: what one proposes the other
accepts, every way a Byzantine proposer can bend a block is refused with a
reason, and executing the same blocks gives the same state root on both.
"""

from __future__ import annotations

import msgspec
import pytest

from consensus.app import VerdictKind
from ledger import codec
from ledger.apply import ApplyContext
from ledger.block import Block, BlockHeader
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_hash
from ledger.keys import KeyPair
from ledger.merkle import merkle_root
from ledger.tx import RegisterPatient, Tx, make_tx, tx_hash
from ledger.validate import SigCache
from node.ledger_app import (
    PROPOSAL_SPACING_CAP_S,
    LedgerApplication,
    open_chain,
    proposal_spacing_for,
)
from node.mempool import LedgerTxChecker, Mempool
from storage.store import Store, open_memory

CHAIN = "test-chain"
T0 = 1_700_000_000_000
ORGS = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]
GENESIS = Genesis(
    CHAIN,
    T0,
    sorted((GenesisOrg(k.public_key, f"hospital-{i}") for i, k in enumerate(ORGS)),
           key=lambda o: o.key),
    sorted(k.public_key for k in ORGS),
    ConsensusParams(window=2),
    Policy(),
)
GHASH = genesis_hash(GENESIS)


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 1000

    def __call__(self) -> int:
        return self.now


class Side:
    """One node's application stack on an in-memory store."""

    def __init__(self, key: KeyPair, clock: Clock) -> None:
        self.store: Store = open_memory()
        open_chain(self.store, GENESIS)
        self.ctx = ApplyContext.from_genesis(GENESIS, SigCache())
        self.mempool = Mempool(LedgerTxChecker(self.store, self.ctx, time_ms=T0))
        self.app = LedgerApplication(
            store=self.store, genesis=GENESIS, key=key, mempool=self.mempool,
            ctx=self.ctx, clock_ms=clock,
        )

    def commit(self, height: int, block: bytes) -> bytes:
        root = self.app.commit(height, block, b"cert")
        self.app.after_commit()
        return root


def registrations(org: KeyPair, start: int, n: int) -> list[Tx]:
    return [
        make_tx(org, CHAIN, start + i, RegisterPatient(
            KeyPair.from_seed(b"patient-" + (start + i).to_bytes(24, "big")).public_key))
        for i in range(n)
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pair(clock: Clock) -> tuple[Side, Side]:
    return Side(ORGS[0], clock), Side(ORGS[1], clock)


def test_idle_mempool_proposes_nothing(pair: tuple[Side, Side]) -> None:
    primary, _ = pair
    assert primary.app.propose(1, GHASH, []) is None
    assert not primary.app.has_pending()


def test_proposal_validates_and_executes_identically(pair: tuple[Side, Side]) -> None:
    primary, replica = pair
    for tx in registrations(ORGS[0], 0, 5):
        primary.mempool.add(codec.encode(tx))
    block = primary.app.propose(1, GHASH, [])
    assert block is not None and primary.app.has_pending()
    verdict = replica.app.validate(1, GHASH, block, [])
    assert verdict.kind is VerdictKind.OK, verdict.reason
    assert primary.commit(1, block) == replica.commit(1, block)
    assert not primary.app.has_pending()  # committed txs left the mempool
    assert primary.store.tx_location(tx_hash(codec.encode(codec.decode(block, Block).txs[0])))


def test_pipelined_proposal_skips_in_flight_txs(pair: tuple[Side, Side]) -> None:
    primary, replica = pair
    for tx in registrations(ORGS[0], 0, 3):
        primary.mempool.add(codec.encode(tx))
    first = primary.app.propose(1, GHASH, [])
    assert first is not None
    assert primary.app.propose(2, primary.app.digest_of(first) or b"", [first]) is None
    for tx in registrations(ORGS[0], 3, 2):
        primary.mempool.add(codec.encode(tx))
    second = primary.app.propose(2, primary.app.digest_of(first) or b"", [first])
    assert second is not None
    assert len(codec.decode(second, Block).txs) == 2
    parent = replica.app.digest_of(first) or b""
    assert replica.app.validate(2, parent, second, [first]).kind is VerdictKind.OK


def _reseal(block: Block, **changes: object) -> bytes:
    header = replace_header(block.header, **changes)
    return codec.encode(Block(header, block.txs))


def replace_header(header: BlockHeader, **changes: object) -> BlockHeader:
    return msgspec.structs.replace(header, **changes)


@pytest.fixture
def proposal(pair: tuple[Side, Side]) -> Block:
    primary, _ = pair
    for tx in registrations(ORGS[0], 0, 4):
        primary.mempool.add(codec.encode(tx))
    raw = primary.app.propose(1, GHASH, [])
    assert raw is not None
    return codec.decode(raw, Block)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"chain_id": "other"}, "wrong chain id"),
        ({"height": 2}, "header height"),
        ({"parent_hash": b"\x09" * 32}, "parent hash"),
        ({"proposer": b"\x09" * 32}, "not a validator"),
        ({"tx_count": 3}, "tx count"),
        ({"tx_root": b"\x09" * 32}, "tx root"),
        ({"state_root": b"\x09" * 32}, "state root"),
        ({"time_ms": T0}, "does not advance"),
    ],
)
def test_bent_headers_are_refused(
    pair: tuple[Side, Side], proposal: Block, change: dict[str, object], reason: str
) -> None:
    _, replica = pair
    verdict = replica.app.validate(1, GHASH, _reseal(proposal, **change), [])
    assert verdict.kind is VerdictKind.INVALID
    assert reason in verdict.reason


def test_block_time_ahead_of_our_clock_is_not_yet(
    pair: tuple[Side, Side], proposal: Block, clock: Clock
) -> None:
    _, replica = pair
    ahead = proposal.header.time_ms + GENESIS.params.max_time_skew_ms + 10_000
    verdict = replica.app.validate(1, GHASH, _reseal(proposal, time_ms=ahead), [])
    assert verdict.kind is VerdictKind.NOT_YET
    clock.now = ahead  # our clock catches up: the same block becomes acceptable
    assert replica.app.validate(1, GHASH, _reseal(proposal, time_ms=ahead), []).kind is (
        VerdictKind.OK
    )


def test_repeated_and_forged_txs_are_refused(pair: tuple[Side, Side], proposal: Block) -> None:
    _, replica = pair
    twice = proposal.txs + proposal.txs[:1]
    hashes = [tx_hash(codec.encode(t)) for t in twice]
    block = Block(replace_header(proposal.header, tx_count=len(twice),
                                 tx_root=merkle_root(hashes)), twice)
    verdict = replica.app.validate(1, GHASH, codec.encode(block), [])
    assert verdict.kind is VerdictKind.INVALID and "repeated" in verdict.reason

    forged = msgspec.structs.replace(proposal.txs[0], signature=b"\x00" * 64)
    txs = [forged, *proposal.txs[1:]]
    hashes = [tx_hash(codec.encode(t)) for t in txs]
    block = Block(replace_header(proposal.header, tx_root=merkle_root(hashes)), txs)
    verdict = replica.app.validate(1, GHASH, codec.encode(block), [])
    assert verdict.kind is VerdictKind.INVALID and "BAD_SIGNATURE" in verdict.reason


def test_tx_repeated_from_an_ancestor_or_the_chain_is_refused(
    pair: tuple[Side, Side], proposal: Block
) -> None:
    _, replica = pair
    first = codec.encode(proposal)
    parent = proposal.hash()
    again = Block(
        replace_header(proposal.header, height=2, parent_hash=parent,
                       time_ms=proposal.header.time_ms + 1),
        proposal.txs,
    )
    verdict = replica.app.validate(2, parent, codec.encode(again), [first])
    assert verdict.kind is VerdictKind.INVALID and "repeated" in verdict.reason
    replica.commit(1, first)
    verdict = replica.app.validate(2, parent, codec.encode(again), [])
    assert verdict.kind is VerdictKind.INVALID and "repeated" in verdict.reason


def test_garbage_is_not_a_block(pair: tuple[Side, Side]) -> None:
    _, replica = pair
    assert replica.app.digest_of(b"\x01\x02") is None
    assert replica.app.parent_of(b"") is None
    verdict = replica.app.validate(1, GHASH, b"\x93\x01", [])
    assert verdict.kind is VerdictKind.INVALID


def test_committed_block_is_served_for_state_transfer(
    pair: tuple[Side, Side], proposal: Block
) -> None:
    primary, _ = pair
    raw = codec.encode(proposal)
    primary.commit(1, raw)
    assert primary.app.committed_block(1) == (raw, b"cert")
    assert primary.app.committed_block(0) is None
    assert primary.app.committed_block(2) is None


def test_store_of_another_network_is_refused() -> None:
    store = open_memory()
    open_chain(store, GENESIS)
    other = Genesis(CHAIN + "-2", T0, GENESIS.organisations, GENESIS.validators,
                    GENESIS.params, GENESIS.policy)
    with pytest.raises(Exception, match="another network"):
        open_chain(store, other)


def test_small_blocks_wait_while_the_pipeline_is_busy(clock: Clock) -> None:
    now = [100.0]
    side = Side(ORGS[0], clock)
    side.app = LedgerApplication(
        store=side.store, genesis=GENESIS, key=ORGS[0], mempool=side.mempool, ctx=side.ctx,
        clock_ms=clock, batch_wait_s=0.2, monotonic=lambda: now[0],
    )
    for tx in registrations(ORGS[0], 0, 2):
        side.mempool.add(codec.encode(tx))
    first = side.app.propose(1, GHASH, [])
    assert first is not None  # idle pipeline: at once
    for tx in registrations(ORGS[0], 2, 2):
        side.mempool.add(codec.encode(tx))
    parent = side.app.digest_of(first) or b""
    assert side.app.propose(2, parent, [first]) is None  # busy and small: wait
    now[0] += 0.25
    second = side.app.propose(2, parent, [first])
    assert second is not None and len(codec.decode(second, Block).txs) == 2


def test_large_networks_space_proposals_even_with_an_idle_pipeline(clock: Clock) -> None:
    batch_wait, spacing = proposal_spacing_for(0.2, 16)
    assert (batch_wait, spacing) == (pytest.approx(1.0), pytest.approx(1.0))
    assert proposal_spacing_for(0.2, 4) == (0.2, 0.0)  # small networks: unchanged
    assert proposal_spacing_for(0.2, 7) == (pytest.approx(0.4), pytest.approx(0.4))
    assert proposal_spacing_for(0.2, 100)[1] == PROPOSAL_SPACING_CAP_S
    assert proposal_spacing_for(0.0, 16) == (0.0, 0.0)  # batching off stays off
    now = [100.0]
    side = Side(ORGS[0], clock)
    side.app = LedgerApplication(
        store=side.store, genesis=GENESIS, key=ORGS[0], mempool=side.mempool, ctx=side.ctx,
        clock_ms=clock, batch_wait_s=batch_wait, idle_spacing_s=spacing,
        monotonic=lambda: now[0],
    )
    for tx in registrations(ORGS[0], 0, 2):
        side.mempool.add(codec.encode(tx))
    first = side.app.propose(1, GHASH, [])
    assert first is not None  # the first proposal in a while: at once
    now[0] += 0.5  # block 1 committed meanwhile: nothing in flight, yet too soon
    assert side.app.proposal_deferred(0)
    now[0] += 0.5
    assert not side.app.proposal_deferred(0)
    assert not side.app.proposal_deferred(1)  # in flight: batch_wait (1 s) has passed too
