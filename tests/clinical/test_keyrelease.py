"""Automatic key release: the decision (pure) and the service (Trio, fake mempool)."""

from __future__ import annotations

import pytest
import trio

from ledger import codec
from ledger.state import StateView
from ledger.tx import EraseRecord, KeyRelease, RevokeConsent, Tx
from node.clinical.index import PatientIndex, committed_txs
from node.clinical.keyrelease import KeyReleaseService, Release, needs_release, triggers
from node.clinical.reads import ClinicalReads
from tests.clinical.helpers import World

PLAIN = b'{"resourceType":"Observation","note":[{"text":"MARKER-release"}]}'


class FakeMempool:
    """The service's Submitter: collects txs; ``flush`` commits them as the next block."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.pending: dict[bytes, tuple[bytes, bytes | None]] = {}

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        from ledger.tx import tx_hash

        txh = tx_hash(tx)
        self.pending[txh] = (tx, blob)
        return txh

    def next_nonce(self, sender: bytes, committed_next: int) -> int:
        n = committed_next
        senders = {codec.decode(t, Tx).nonce for t, _ in self.pending.values()}
        while n in senders:
            n += 1
        return n

    def is_pending(self, tx_hash: bytes) -> bool:
        return tx_hash in self.pending

    def flush(self) -> list[str]:
        items = [(codec.decode(t, Tx), b) for t, b in self.pending.values()]
        self.pending.clear()
        if not items:
            return []
        result = self.world.chain.commit(items)
        for tx, _ in items:  # keep the chain helper's nonce book in step
            self.world.chain.nonces[tx.sender] = max(
                self.world.chain.nonces.get(tx.sender, 0), tx.nonce + 1
            )
        return [r.code for r in result.results]


@pytest.fixture
def world() -> World:
    return World()


def service(world: World, mempool: FakeMempool) -> tuple[KeyReleaseService, PatientIndex]:
    index = PatientIndex()
    svc = KeyReleaseService(
        world.chain.store,
        index,
        world.a,
        world.chain.genesis.chain_id,
        world.chain.genesis.policy.break_glass(),
        mempool,
    )
    return svc, index


def wants(world: World, index: PatientIndex) -> set[Release]:
    """Triggers of every committed block, filtered by the decision (fresh index)."""
    view = StateView(world.chain.store)
    out: set[Release] = set()
    for h in range(index.height + 1, world.chain.height + 1):
        txs = [(tx, code) for _i, tx, code in committed_txs(world.chain.store, h)]
        for tx, code in txs:
            index.fold(tx, code)
        index.height = h
        out |= set(triggers(view, index, world.a.public_key, txs))
    return {
        r
        for r in out
        if needs_release(
            view,
            r,
            world.a.public_key,
            time_ms=world.chain.time_ms,
            height=world.chain.height + 1,
            policy=world.chain.genesis.policy.break_glass(),
        )
    }


def test_grant_after_anchor_triggers_release(world: World) -> None:
    rid = world.anchor(PLAIN)
    index = PatientIndex()
    assert wants(world, index) == set()
    world.grant(world.d2.public_key)
    assert wants(world, index) == {Release(rid, world.d2.public_key)}


def test_anchor_after_grant_triggers_release(world: World) -> None:
    world.grant(world.d2.public_key)
    index = PatientIndex()
    assert wants(world, index) == set()
    rid = world.anchor(PLAIN)
    assert wants(world, index) == {Release(rid, world.d2.public_key)}


def test_grant_for_another_category_or_revoked_releases_nothing(world: World) -> None:
    world.anchor(PLAIN)
    cid = world.grant(world.d2.public_key, categories=["laboratory"])
    assert wants(world, PatientIndex()) == set()
    cid = world.grant(world.d2.public_key)
    world.chain.run(world.p, RevokeConsent(cid))
    assert wants(world, PatientIndex()) == set()


def test_other_custodians_records_are_not_ours(world: World) -> None:
    world.anchor(PLAIN)
    world.grant(world.d2.public_key)
    index = PatientIndex()
    index.catch_up(world.chain.store)
    view = StateView(world.chain.store)
    txs = [(tx, code) for _i, tx, code in committed_txs(world.chain.store, world.chain.height)]
    assert list(triggers(view, index, world.b.public_key, txs)) == []


def test_denied_access_releases_nothing_emergency_does(world: World) -> None:
    rid = world.anchor(PLAIN)
    index = PatientIndex()
    world.access(world.d2, rid)
    assert wants(world, index) == set()
    world.access(world.d3, rid, emergency="ETREAT")
    assert wants(world, index) == {Release(rid, world.d3.public_key)}


def test_erased_record_is_never_released(world: World) -> None:
    rid = world.anchor(PLAIN)
    world.grant(world.d2.public_key)
    world.chain.run(world.p, EraseRecord(rid))
    assert wants(world, PatientIndex()) == set()


async def test_service_releases_within_the_next_block_and_reader_decrypts(world: World) -> None:
    mempool = FakeMempool(world)
    svc, index = service(world, mempool)
    rid = world.anchor(PLAIN)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        assert mempool.pending == {}
        world.grant(world.d2.public_key)
        svc.notify()
        with trio.fail_after(5):
            while not mempool.pending:
                await trio.sleep(0.01)
        ((tx_bytes, blob),) = mempool.pending.values()
        tx = codec.decode(tx_bytes, Tx)
        assert isinstance(tx.body, KeyRelease) and tx.body.reader == world.d2.public_key
        assert tx.sender == world.a.public_key and blob is not None
        await svc.step()  # still pending: no second submission
        assert len(mempool.pending) == 1
        assert mempool.flush() == ["OK"]
        svc.notify()
        await svc.step()
        assert mempool.pending == {}  # satisfied: nothing more to do
        nursery.cancel_scope.cancel()
    assert svc.released == 1
    txh, code = world.access(world.d2, rid)
    assert code == "OK"
    reads = ClinicalReads(
        world.chain.store,
        world.chain.genesis.policy.break_glass(),
        index,
        clock_ms=lambda: world.chain.time_ms,
    )
    answer = reads.read_record(rid, world.d2.public_key, txh)
    from ledger import envelope

    key = envelope.unwrap_key(answer["sealed_key"], world.d2)
    assert envelope.decrypt_record(key, answer["nonce"], answer["ciphertext"], rid) == PLAIN


async def test_service_catches_up_on_start_and_retries_a_lost_release(world: World) -> None:
    rid = world.anchor(PLAIN)
    world.grant(world.d2.public_key)  # committed before the service exists (a restart)
    mempool = FakeMempool(world)
    svc, index = service(world, mempool)
    await svc.step()
    assert index.height == world.chain.height
    assert index.records_of(world.p.public_key) == [rid]
    assert len(mempool.pending) == 1
    mempool.pending.clear()  # the tx was lost (evicted): retried on the next commit
    await svc.step()
    assert len(mempool.pending) == 1
    assert mempool.flush() == ["OK"]
    await svc.step()
    assert mempool.pending == {}


async def test_notified_blocks_are_not_decoded_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    mempool = FakeMempool(world)
    svc, index = service(world, mempool)
    await svc.step()  # caught up with the registrations
    rid = world.anchor(PLAIN)
    world.grant(world.d2.public_key)
    for h in (world.chain.height - 1, world.chain.height):
        svc.notify(h, [(tx, code) for _i, tx, code in committed_txs(world.chain.store, h)])

    def no_store_reads(*_args: object) -> object:
        raise AssertionError("a notified height was decoded again")

    monkeypatch.setattr("node.clinical.keyrelease.committed_txs", no_store_reads)
    await svc.step()
    assert index.records_of(world.p.public_key) == [rid]
    ((tx_bytes, _blob),) = mempool.pending.values()
    body = codec.decode(tx_bytes, Tx).body
    assert isinstance(body, KeyRelease) and body.reader == world.d2.public_key
