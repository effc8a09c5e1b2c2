"""Mempool: admission, limits, nonce ordering, reap, update/recheck, waiters, gossip batching."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from ledger import codec
from ledger.apply import ApplyContext
from ledger.consent import BreakGlassPolicy
from ledger.errors import (
    BadSignatureError,
    DecodeError,
    LedgerError,
    NonceGapError,
    NonceReplayError,
    UnauthorizedError,
    UnknownSenderError,
)
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_apply
from ledger.keys import KeyPair
from ledger.tx import RegisterPatient, Tx, make_tx, tx_hash
from ledger.validate import SigCache
from node import config as node_config
from node.mempool import (
    AlreadyKnownError,
    BusyError,
    Committed,
    ExpiredError,
    LedgerTxChecker,
    Mempool,
    MempoolFullError,
    MempoolSettings,
    NoncePendingError,
    decode_batch,
    encode_batch,
    gossip_interval_for,
)
from node.metrics import NodeMetrics

CHAIN = "test-chain"


def key(i: int) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(b"mempool-test-%d" % i).digest())


def tx(sender: int, nonce: int, patient: int = 0) -> bytes:
    body = RegisterPatient(hashlib.sha256(b"patient-%d-%d" % (sender, patient)).digest())
    return make_tx(key(sender), CHAIN, nonce, body).encode()


class FakeChecker:
    """Decodes for real; nonces and rule failures come from dicts the test sets."""

    def __init__(self) -> None:
        self.nonces: dict[bytes, int] = {}
        self.refuse: dict[bytes, LedgerError] = {}  # tx hash -> error of check_stateful
        self.stateless_calls = 0
        self.stateful_calls = 0

    def check_stateless(self, tx_bytes: bytes, blob: bytes | None) -> tuple[Tx, bytes]:
        self.stateless_calls += 1
        return codec.decode(tx_bytes, Tx), tx_hash(tx_bytes)

    def next_nonce(self, sender: bytes) -> int:
        return self.nonces.get(sender, 0)

    def check_stateful(self, tx: Tx) -> None:
        self.stateful_calls += 1
        err = self.refuse.get(tx.hash())
        if err is not None:
            raise err


def pool(**settings: object) -> tuple[Mempool, FakeChecker, NodeMetrics]:
    checker = FakeChecker()
    metrics = NodeMetrics()
    return Mempool(checker, MempoolSettings(**settings), metrics=metrics), checker, metrics  # type: ignore[arg-type]


def rejected(metrics: NodeMetrics, code: str) -> float:
    value = metrics.registry.get_sample_value("medledger_txs_rejected_total", {"reason": code})
    return value or 0.0


# --- admission -----------------------------------------------------------------------


def test_add_returns_hash_and_dedups() -> None:
    mp, checker, metrics = pool()
    data = tx(1, 0)
    assert mp.add(data) == tx_hash(data)
    assert tx_hash(data) in mp and len(mp) == 1
    with pytest.raises(AlreadyKnownError) as info:
        mp.add(data)
    assert info.value.tx_hash == tx_hash(data)
    assert info.value.code == "ALREADY_KNOWN"
    assert checker.stateless_calls == 1  # the duplicate was refused before any check
    assert len(mp) == 1
    assert rejected(metrics, "ALREADY_KNOWN") == 1
    assert metrics.registry.get_sample_value("medledger_mempool_txs") == 1


def test_count_limit_is_mempool_full() -> None:
    mp, _, metrics = pool(max_txs=3)
    for i in range(3):
        mp.add(tx(i, 0))
    with pytest.raises(MempoolFullError) as info:
        mp.add(tx(9, 0))
    assert info.value.code == "MEMPOOL_FULL"
    assert len(mp) == 3
    assert rejected(metrics, "MEMPOOL_FULL") == 1


def test_byte_limits_are_mempool_full() -> None:
    size = len(tx(0, 0))
    mp, _, _ = pool(max_bytes=2 * size + 1)
    mp.add(tx(0, 0))
    mp.add(tx(1, 0))
    with pytest.raises(MempoolFullError):
        mp.add(tx(2, 0))
    mp2, _, _ = pool(max_blob_bytes=100)
    mp2.add(tx(0, 0), b"x" * 60)
    with pytest.raises(MempoolFullError):
        mp2.add(tx(1, 0), b"x" * 60)
    assert mp2.statistics().blob_bytes == 60


def test_nonce_window() -> None:
    mp, checker, metrics = pool(max_nonces_ahead=2)
    checker.nonces[key(1).public_key] = 5
    with pytest.raises(NonceReplayError):
        mp.add(tx(1, 4))
    with pytest.raises(NonceGapError):
        mp.add(tx(1, 8))
    mp.add(tx(1, 7))  # two ahead: held
    mp.add(tx(1, 5))
    with pytest.raises(NoncePendingError) as info:
        mp.add(tx(1, 5, patient=1))  # same nonce, another tx
    assert info.value.code == "NONCE_PENDING"
    assert rejected(metrics, "NONCE_REPLAYED") == 1 and rejected(metrics, "NONCE_GAP") == 1


def test_stateful_refusal_is_typed_and_counted() -> None:
    mp, checker, metrics = pool()
    data = tx(1, 0)
    checker.refuse[tx_hash(data)] = UnauthorizedError("no")
    with pytest.raises(UnauthorizedError):
        mp.add(data)
    assert len(mp) == 0
    assert rejected(metrics, "UNAUTHORIZED") == 1
    assert mp.statistics().rejected_total == 1


# --- reap ------------------------------------------------------------------------------


def test_reap_orders_by_nonce_within_sender_and_arrival_across() -> None:
    mp, _, _ = pool()
    mp.add(tx(1, 1))  # arrives before its predecessor
    mp.add(tx(2, 0))
    mp.add(tx(1, 0))
    mp.add(tx(2, 1))
    mp.add(tx(3, 1))  # gap: sender 3's nonce 0 is missing
    got = [(p.tx.sender, p.tx.nonce) for p in mp.reap(100, 1 << 20)]
    s1, s2 = key(1).public_key, key(2).public_key
    assert got == [(s2, 0), (s1, 0), (s1, 1), (s2, 1)]
    assert len(mp) == 5  # reap removes nothing


def test_reap_limits_and_skip() -> None:
    mp, _, _ = pool()
    for n in range(5):
        mp.add(tx(1, n))
    size = len(tx(1, 0))
    assert [p.tx.nonce for p in mp.reap(3, 1 << 20)] == [0, 1, 2]
    assert [p.tx.nonce for p in mp.reap(100, 2 * size)] == [0, 1]
    assert mp.reap(0, 1 << 20) == []
    in_flight = {tx_hash(tx(1, 0)), tx_hash(tx(1, 1))}
    assert [p.tx.nonce for p in mp.reap(100, 1 << 20, skip=in_flight)] == [2, 3, 4]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), max_size=40, unique=True),
    st.integers(1, 30),
)
def test_reap_respects_each_senders_sequence(adds: list[tuple[int, int]], limit: int) -> None:
    mp, _, _ = pool()
    for sender, nonce in adds:
        mp.add(tx(sender, nonce))
    reaped = mp.reap(limit, 1 << 30)
    assert len(reaped) <= limit
    seen: dict[bytes, int] = {}
    for p in reaped:
        assert p.tx.nonce == seen.get(p.tx.sender, 0)  # contiguous from the state's nonce
        seen[p.tx.sender] = p.tx.nonce + 1
    if limit >= len(adds):  # everything reachable from nonce 0 was taken
        pending = set(adds)
        for sender in range(4):
            n = seen.get(key(sender).public_key, 0)
            assert (sender, n) not in pending
    assert reaped == mp.reap(limit, 1 << 30)  # deterministic


# --- update, recheck, waiters ---------------------------------------------------------------


async def test_update_evicts_committed_and_wakes_waiters() -> None:
    mp, checker, metrics = pool()
    hashes = [mp.add(tx(1, n)) for n in range(3)]
    results: dict[bytes, Committed] = {}

    async def wait(h: bytes) -> None:
        results[h] = await mp.wait_committed(h)

    async with trio.open_nursery() as nursery:
        for h in hashes[:2]:
            nursery.start_soon(wait, h)
        await trio.testing.wait_all_tasks_blocked()
        assert mp.statistics().waiters == 2
        checker.nonces[key(1).public_key] = 2
        mp.update(7, [b"\x00" * 32, hashes[1], hashes[0]])
    assert results == {hashes[1]: Committed(7, 1), hashes[0]: Committed(7, 2)}
    assert await mp.wait_committed(hashes[0]) == Committed(7, 2)  # late waiter: at once
    assert mp.recently_committed(b"\x00" * 32) == Committed(7, 0)
    assert mp.recently_committed(hashes[2]) is None
    assert len(mp) == 1 and hashes[2] in mp
    assert mp.statistics().waiters == 0 and mp.statistics().height == 7
    assert metrics.registry.get_sample_value("medledger_commit_latency_seconds_count") == 2


def test_a_late_copy_of_a_committed_tx_is_refused_without_checks() -> None:
    """A block can overtake the gossip of its txs: the late copy costs a hash lookup."""
    mp, checker, metrics = pool()
    committed = tx(1, 0)
    mp.update(3, [tx_hash(committed)])  # learned from the block, never pending here
    with pytest.raises(NonceReplayError, match="height 3"):
        mp.add(committed, source="gossip")
    assert checker.stateless_calls == 0 and checker.stateful_calls == 0
    assert rejected(metrics, "NONCE_REPLAYED") == 1 and len(mp) == 0
    mp.add(tx(1, 1))  # the sender's next tx is admitted as usual
    assert checker.stateless_calls == 1


async def test_recheck_evicts_invalid_and_tells_the_waiter() -> None:
    mp, checker, metrics = pool()
    keep = mp.add(tx(1, 0))
    bad = mp.add(tx(2, 0))
    replaced = mp.add(tx(3, 0))
    checker.refuse[bad] = UnauthorizedError("revoked")
    checker.nonces[key(3).public_key] = 1  # another tx with nonce 0 committed elsewhere
    errors: list[LedgerError] = []

    async def wait() -> None:
        try:
            await mp.wait_committed(bad)
        except UnauthorizedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        mp.update(1, [])
    assert [type(e) for e in errors] == [UnauthorizedError]
    assert keep in mp and bad not in mp and replaced not in mp
    ev = metrics.registry.get_sample_value
    assert ev("medledger_mempool_evicted_total", {"reason": "UNAUTHORIZED"}) == 1
    assert ev("medledger_mempool_evicted_total", {"reason": "NONCE_REPLAYED"}) == 1


def test_recheck_is_bounded_and_resumes() -> None:
    mp, checker, _ = pool(recheck_budget_txs=2)
    hashes = [mp.add(tx(i, 0)) for i in range(5)]
    calls = checker.stateful_calls
    mp.update(1, [])
    assert checker.stateful_calls - calls == 2
    for h in hashes:
        checker.refuse[h] = UnauthorizedError("x")
    mp.update(2, [])
    mp.update(3, [])
    assert len(mp) == 1  # 4 of 5 rechecked (and evicted) in two budgets of 2
    mp.update(4, [])
    assert len(mp) == 0


def test_recheck_work_follows_the_block_not_the_backlog() -> None:
    mp, checker, _ = pool(recheck_per_committed=2, recheck_min=3, max_nonces_ahead=100)
    pending = [mp.add(tx(1, n)) for n in range(1, 21)]  # 20 txs behind sender 1's nonce 0
    for h in pending:
        checker.refuse[h] = UnauthorizedError("x")  # every recheck evicts
    calls = checker.stateful_calls
    mp.update(1, [bytes([i]) * 32 for i in range(4)])  # a block of 4 others' txs
    assert checker.stateful_calls - calls == 8 and len(mp) == 12  # 2 x 4, not all 20
    mp.update(2, [])
    assert len(mp) == 9  # recheck_min for a block without txs of ours
    for height in range(3, 6):
        mp.update(height, [])
    assert len(mp) == 0  # every pending tx had its turn


def test_unincludable_txs_expire() -> None:
    mp, _, metrics = pool(ttl_blocks=3)
    mp.add(tx(1, 1))  # behind a gap forever
    for h in range(1, 4):
        mp.update(h, [])
        assert len(mp) == 1
    mp.update(4, [])
    assert len(mp) == 0
    assert (
        metrics.registry.get_sample_value(
            "medledger_mempool_evicted_total", {"reason": ExpiredError.code}
        )
        == 1
    )


async def test_waiters_are_bounded_and_cancellable() -> None:
    mp, _, _ = pool(max_waiters=1)
    h = mp.add(tx(1, 0))
    with trio.move_on_after(1) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mp.wait_committed, h)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(BusyError):
                await mp.wait_committed(h)
            scope.cancel()
    assert mp.statistics().waiters == 0
    assert mp._waiters == {}


# --- gossip -------------------------------------------------------------------------------


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock()


async def test_gossip_batches_by_size(mock_clock: trio.testing.MockClock) -> None:
    item = len(tx(0, 0)) + 12
    mp, _, metrics = pool(gossip_batch_bytes=3 * item, gossip_batch_interval_s=10.0)
    published: list[tuple[float, bytes]] = []

    async def publish(data: bytes) -> None:
        published.append((trio.current_time(), data))

    async with trio.open_nursery() as nursery:
        await nursery.start(mp.run_gossip, publish)
        sent = [tx(i, 0) for i in range(7)]
        for data in sent:
            await mp.submit(data)
        await trio.testing.wait_all_tasks_blocked()
        # two full batches left at once (no clock movement); the 7th waits for its timer
        assert [len(decode_batch(d, 1 << 20).items) for _, d in published] == [3, 3]
        assert all(t == 0 for t, _ in published)
        mp.close_outbox()
    batches = [decode_batch(d, 1 << 20) for _, d in published]
    assert [it.tx for b in batches for it in b.items] == sent  # order kept, nothing lost
    assert all(len(d) <= 3 * item for _, d in published)
    assert metrics.registry.get_sample_value("medledger_mempool_gossip_batches_total") == 3


def test_reannounce_gossips_only_stale_txs_oldest_first_and_bounded() -> None:
    now = [0.0]
    checker = FakeChecker()
    metrics = NodeMetrics()
    mp = Mempool(checker, MempoolSettings(outbox_size=8), metrics=metrics, clock=lambda: now[0])
    old = [tx(i, 0) for i in range(5)]
    for data in old:
        mp.add(data)  # admitted, not queued for gossip: the outbox stays empty
    now[0] = 2.0
    young = tx(9, 0)
    mp.add(young)

    def drain() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(mp._outbox_recv.receive_nowait()[0])
            except trio.WouldBlock:
                return out

    now[0] = 2.9
    assert mp.reannounce_stale(3.0, 100) == 0 and drain() == []
    now[0] = 3.5
    assert mp.reannounce_stale(3.0, 3) == 3  # bounded per call, oldest first
    assert drain() == old[:3]
    assert mp.reannounce_stale(3.0, 100) == 2  # the rest; the young one is not due
    assert drain() == old[3:]
    assert mp.reannounce_stale(3.0, 100) == 0  # each is announced once per period
    now[0] = 5.1
    assert mp.reannounce_stale(3.0, 100) == 1 and drain() == [young]
    assert metrics.registry.get_sample_value("medledger_mempool_gossip_reannounced_total") == 6
    now[0] = 20.0
    for i in range(10, 16):
        mp.add(tx(i, 0))
    now[0] = 30.0  # all 12 are due; the outbox (8) bounds the round, and it never waits
    assert mp.reannounce_stale(3.0, 100) == 8
    assert len(drain()) == 8
    mp.update(1, [tx_hash(d) for d in old])  # committed txs are never announced again
    now[0] = 40.0
    # Backoff: young was re-announced at 5.1 and 30 (next after 12 s more); tx 10 and
    # 11 once, at 30 (next after 6 s); 12..15 never.
    assert mp.reannounce_stale(3.0, 100) == 6
    assert sorted(drain()) == sorted(tx(i, 0) for i in range(10, 16))
    now[0] = 42.0
    again = []
    while mp.reannounce_stale(3.0, 100):
        again += drain()
    assert again == [young]
    now[0] = 1e6  # the wait is capped: a tx stuck for good is still re-sent now and then
    assert mp.reannounce_stale(3.0, 100) == 7


async def test_gossip_batches_by_time(mock_clock: trio.testing.MockClock) -> None:
    mp, _, _ = pool(gossip_batch_bytes=1 << 20, gossip_batch_interval_s=0.02)
    published: list[tuple[float, int]] = []

    async def publish(data: bytes) -> None:
        published.append((trio.current_time(), len(decode_batch(data, 1 << 20).items)))

    async with trio.open_nursery() as nursery:
        await nursery.start(mp.run_gossip, publish)
        await mp.submit(tx(1, 0))
        await trio.testing.wait_all_tasks_blocked()  # the batcher holds it: its timer runs
        mock_clock.jump(0.01)
        await mp.submit(tx(2, 0))
        await trio.testing.wait_all_tasks_blocked()
        assert published == []  # neither size nor age reached
        mock_clock.jump(0.0101)
        await trio.testing.wait_all_tasks_blocked()
        assert len(published) == 1
        assert published[0][0] == pytest.approx(0.0201) and published[0][1] == 2
        nursery.cancel_scope.cancel()


async def test_gossip_backpressure_blocks_submit_without_dropping() -> None:
    mp, _, metrics = pool(outbox_size=2, gossip_batch_bytes=1, gossip_batch_interval_s=0.0)
    net_send, net_recv = trio.open_memory_channel[bytes](0)  # the network: nobody reading yet
    sent = [tx(i, 0) for i in range(6)]
    done: list[bytes] = []

    async def client() -> None:
        for data in sent:
            done.append(await mp.submit(data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mp.run_gossip, net_send.send)
        nursery.start_soon(client)
        await trio.testing.wait_all_tasks_blocked()
        # one batch stuck in publish, two queued in the outbox, the 4th submit waits
        assert mp.statistics().outbox_queued == 2
        assert len(done) == 3 and len(mp) == 4
        received = []
        async with net_recv:
            for _ in sent:
                received.append(await net_recv.receive())
        nursery.cancel_scope.cancel()
    assert [decode_batch(d, 1 << 20).items[0].tx for d in received] == sent
    assert len(done) == 6
    dropped = metrics.registry.get_sample_value(
        "medledger_p2p_messages_dropped_total", {"reason": "outbox_cancelled"}
    )
    assert dropped is None


async def test_add_batch_from_peer() -> None:
    mp, _, metrics = pool()
    mp.add(tx(1, 0))
    checker = mp._checker
    assert isinstance(checker, FakeChecker)
    checker.nonces[key(3).public_key] = 5
    data = encode_batch([(tx(1, 0), None), (tx(2, 0), None), (tx(3, 0), None)])
    outcome = await mp.add_batch(data)
    assert (outcome.accepted, outcome.duplicates, outcome.rejected) == (1, 1, 1)
    assert (
        metrics.registry.get_sample_value("medledger_txs_accepted_total", {"source": "gossip"}) == 1
    )
    assert mp.statistics().outbox_queued == 0  # peer txs are not re-gossiped
    with pytest.raises(DecodeError):
        await mp.add_batch(b"\x91\x01")
    small = Mempool(checker, MempoolSettings(max_batch_message_bytes=10))
    with pytest.raises(DecodeError):  # TooLargeError, before decoding
        await small.add_batch(data)


# --- with the real ledger checks ---------------------------------------------------------------


class DictState:
    """A StateReader over the writes of genesis."""

    def __init__(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        self.data = {k: v for k, v in writes if v is not None}

    def get_state(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.data.items() if k.startswith(prefix)))

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        return None


def real_pool(metrics: NodeMetrics | None = None) -> tuple[Mempool, SigCache]:
    org = key(100)
    genesis = Genesis(
        chain_id=CHAIN,
        genesis_time_ms=1_700_000_000_000,
        organisations=[GenesisOrg(org.public_key, "hospital-a")],
        validators=[org.public_key],
        params=ConsensusParams(),
        policy=Policy(),
    )
    state = DictState(genesis_apply(genesis).state_writes)
    cache = SigCache()
    ctx = ApplyContext(CHAIN, BreakGlassPolicy(True, frozenset({"BTG"})), sig_cache=cache)
    checker = LedgerTxChecker(state, ctx, time_ms=genesis.genesis_time_ms)
    return Mempool(checker, metrics=metrics), cache


async def test_real_ledger_checks() -> None:
    metrics = NodeMetrics()
    mp, cache = real_pool(metrics)
    good = [tx(100, n, patient=n) for n in range(3)]
    for data in reversed(good):  # ahead-of-nonce txs are held
        mp.add(data)
    assert [p.tx.nonce for p in mp.reap(10, 1 << 20)] == [0, 1, 2]
    assert len(cache) == 3
    with pytest.raises(UnknownSenderError):
        mp.add(tx(5, 0))  # not registered
    forged = codec.decode(tx(100, 3), Tx)
    forged = Tx(forged.chain_id, forged.sender, forged.nonce, forged.body, bytes(64))
    with pytest.raises(BadSignatureError):
        mp.add(forged.encode())
    assert (
        metrics.registry.get_sample_value("medledger_invalid_signatures_total", {"kind": "tx"}) == 1
    )
    with pytest.raises(DecodeError):
        mp.add(b"\x00garbage")
    # a peer batch with our own txs: duplicates, refused before any verification
    verified = len(cache)
    outcome = await mp.add_batch(encode_batch([(d, None) for d in good]))
    assert outcome.duplicates == 3
    assert len(cache) == verified


def test_settings_from_node_config() -> None:
    cfg = node_config.test_defaults()
    settings = MempoolSettings.from_config(cfg)
    assert settings.max_txs == cfg.mempool.max_txs
    assert settings.max_bytes == cfg.mempool.max_bytes
    assert settings.gossip_batch_bytes == cfg.p2p.gossip_batch_bytes
    assert settings.gossip_batch_interval_s == cfg.p2p.gossip_batch_interval_s


async def test_too_large_for_gossip_goes_to_the_direct_outbox_not_to_gossip() -> None:
    mp, _, _metrics = pool(max_batch_message_bytes=1000)
    txh = await mp.submit(tx(1, 0), b"\x00" * 2000)
    assert txh in mp  # pending here, and pushed to every validator by node.txpush
    assert mp.statistics().outbox_queued == 0
    pushed = mp.direct_outbox.receive_nowait()
    assert pushed == (tx(1, 0), b"\x00" * 2000)




def test_gossip_interval_grows_with_the_network_so_deliveries_do_not_grow_as_n_squared() -> None:
    base = 0.05
    assert gossip_interval_for(base, 1) == base  # never below the configured figure
    assert gossip_interval_for(base, 4) == base  # the configured case
    for n in (4, 7, 10, 16, 31):
        # batches delivered per second network-wide at one batch per interval per node
        deliveries = n * (n - 1) / gossip_interval_for(base, n)
        assert deliveries == pytest.approx(4 * 3 / base)
    assert gossip_interval_for(base, 16) == pytest.approx(1.0)


def test_rejections_of_one_code_share_one_labelled_counter() -> None:
    mp, _, metrics = pool()
    data = tx(1, 0)
    mp.add(data)
    for _ in range(3):
        with pytest.raises(AlreadyKnownError):
            mp.add(data)
    assert metrics.registry.get_sample_value(
        "medledger_txs_rejected_total", {"reason": AlreadyKnownError.code}
    ) == 3
