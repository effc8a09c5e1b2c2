"""Blob fetch from peers: the sans-IO core, the committed-state rules and the Trio service.

The core tests need no network and no clock (times are plain numbers). The
service tests join services by an in-memory link (the h11 way: two state
machines and a fake wire) over twin in-memory chains that hold the same
committed blocks, one of them without the blob. One test runs the real
libp2p transport in-process to check the ``/medledger/blob/1`` streams.
Waits are conditions with deadlines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
import pytest
import trio

from ledger import codec, envelope
from ledger.blob import blob_hash, canonical_readers, seal_record
from ledger.block import Block
from ledger.keys import KeyPair
from ledger.tx import AnchorRecord, EraseRecord, RecordAccess
from node.api import ApiSettings, create_app
from node.client import sign_request
from node.clinical.blobfetch import (
    FOUND,
    MALFORMED,
    NOT_FOUND,
    RATE_LIMITED,
    REFUSED,
    BlobFetcher,
    BlobRequest,
    BlobResponse,
    BlobServer,
    FetchSettings,
    ServeSettings,
)
from node.clinical.blobfetch_service import (
    BlobFetchService,
    place_blob,
    scan_missing_blobs,
    servable_blob,
)
from node.clinical.index import PatientIndex
from node.clinical.reads import ClinicalReads
from node.clinical.wiring import ClinicalParts
from node.ledger_app import CommitInfo
from node.metrics import NodeMetrics
from node.p2p import BLOB_PROTOCOL, SYNC_PROTOCOL, PeerUnavailableError
from tests._wait import wait_until
from tests.clinical.helpers import MiniChain, World
from tests.node.test_api import NOW_MS, FakeFacade

PLAIN = b'{"resourceType":"Observation","note":[{"text":"MARKER-blobfetch"}]}'
PEERS = [bytes([i]) * 32 for i in (1, 2, 3)]


def sealed(plain: bytes = PLAIN) -> tuple[bytes, bytes, bytes]:
    """(record id, blob, blob hash) of a fresh record blob."""
    rid = os.urandom(16)
    blob, bh, _ = seal_record(plain, rid, [KeyPair.from_seed(os.urandom(32)).public_key])
    return rid, blob, bh


def found(blob: bytes) -> bytes:
    return codec.encode(BlobResponse(FOUND, blob))


def status(code: int) -> bytes:
    return codec.encode(BlobResponse(code))


# --- the client core ---------------------------------------------------------------------


def test_a_verified_blob_is_returned_and_leaves_the_wanted_set() -> None:
    f = BlobFetcher()
    rid, blob, bh = sealed()
    assert f.want(bh, rid, now=0.0) and bh in f
    [req] = f.poll(0.0, PEERS)
    assert codec.decode(req.payload, BlobRequest).blob_hash == bh
    assert (req.record_id, req.blob_hash) == (rid, bh)
    outcome = f.on_response(req, found(blob), now=0.1)
    assert (outcome.result, outcome.blob) == ("ok", blob)
    assert bh not in f and f.poll(1.0, PEERS) == []
    st = f.statistics()
    assert (st.ok, st.missing, st.in_flight) == (1, 0, 0)


def test_each_kind_of_wrong_answer_is_invalid() -> None:
    rid, blob, bh = sealed()
    _, other_blob, _ = sealed()
    not_a_blob = b"\x93not a blob"
    cases = [
        (bh, found(other_blob)),  # a real blob, but not the committed one
        (bh, found(blob + b"\x00")),  # one byte more
        (bh, found(b"x" * 5000)),  # over the size limit
        (bh, b"\xc1garbage"),  # not a response
        (bh, status(FOUND)),  # FOUND without a blob
        (bh, status(MALFORMED)),
        (blob_hash(not_a_blob), found(not_a_blob)),  # the right hash, but no blob inside
    ]
    for wanted, answer in cases:
        f = BlobFetcher(FetchSettings(max_blob_bytes=4096))
        f.want(wanted, rid, 0.0)
        [req] = f.poll(0.0, PEERS)
        outcome = f.on_response(req, answer, 0.0)
        assert (outcome.result, outcome.blob) == ("invalid", None), answer[:16]
        assert wanted in f  # still wanted: asked of the next peer at once
        [again] = f.poll(0.0, PEERS)
        assert again.peer != req.peer
        assert (f.statistics().invalid, f.statistics().ok) == (1, 0)


def test_rotation_then_backoff_then_giving_up() -> None:
    s = FetchSettings(max_rounds=3, backoff_initial_s=1.0, backoff_max_s=1.5)
    f = BlobFetcher(s)
    rid, _, bh = sealed()
    f.want(bh, rid, 0.0)
    now = 0.0
    for round_no in range(1, s.max_rounds + 1):
        asked = []
        for answer in (status(NOT_FOUND), status(RATE_LIMITED), None):
            [req] = f.poll(now, PEERS)
            asked.append(req.peer)
            if answer is None:
                f.on_failure(req, now)
            else:
                assert f.on_response(req, answer, now).result in ("not_found", "rate_limited")
        assert sorted(asked) == sorted(PEERS)  # each peer once per round
        assert f.poll(now, PEERS) == []  # the round failed ...
        if round_no == s.max_rounds:
            break
        assert f.next_wakeup() == now + s.backoff(round_no)
        assert f.poll(now + s.backoff(round_no) - 0.01, PEERS) == []  # ... so it waits
        now += s.backoff(round_no)
    assert bh not in f
    st = f.statistics()
    assert (st.not_found, st.rate_limited, st.unavailable) == (3, 3, 3)
    assert st.gave_up == 1 and st.missing == 0
    assert [s.backoff(n) for n in (1, 2, 3)] == [1.0, 1.5, 1.5]


def test_blobs_start_at_different_peers() -> None:
    firsts = []
    for i in range(6):
        f = BlobFetcher()
        f.want(i.to_bytes(4, "big") + bytes(28), b"r" * 16, 0.0)
        [req] = f.poll(0.0, PEERS)
        firsts.append(req.peer)
    assert firsts == PEERS + PEERS  # the hash picks the first peer: load spreads


def test_memory_and_in_flight_are_bounded() -> None:
    f = BlobFetcher(FetchSettings(max_missing=5, max_in_flight=2))
    hashes = [sealed()[2] for _ in range(7)]
    accepted = [f.want(h, b"r" * 16, 0.0) for h in hashes]
    assert accepted == [True] * 5 + [False] * 2
    assert f.want(hashes[0], b"r" * 16, 0.0)  # already wanted: no new entry
    assert len(f) == 5 and f.overflowed and f.statistics().overflow == 2
    first = f.poll(0.0, PEERS)
    assert len(first) == 2 and len({r.peer for r in first}) == 2  # one per peer
    assert f.poll(0.0, PEERS) == []  # the in-flight bound holds
    f.on_failure(first[0], 0.0)
    [third] = f.poll(0.0, PEERS)
    assert third.peer != first[1].peer  # never two requests to one peer
    only = [PEERS[0]]
    g = BlobFetcher(FetchSettings(max_in_flight=4))
    for h in hashes[:3]:
        g.want(h, b"r" * 16, 0.0)
    assert len(g.poll(0.0, only)) == 1  # one peer connected: one request
    assert g.poll(0.0, []) == []
    with pytest.raises(ValueError):
        g.want(b"short", b"r" * 16, 0.0)


def test_cancelled_stale_or_abandoned_requests_are_ignored() -> None:
    f = BlobFetcher()
    rid, blob, bh = sealed()
    f.want(bh, rid, 0.0)
    [req] = f.poll(0.0, PEERS)
    f.cancel(bh)  # erased, or arrived by gossip, while the request is out
    assert f.on_response(req, found(blob), 0.0).result is None
    assert bh not in f and f.statistics().ok == 0
    f.want(bh, rid, 0.0)
    [old] = f.poll(0.0, PEERS)
    f.cancel(bh)
    f.want(bh, rid, 0.0)  # wanted again while the older request is still out
    [new] = f.poll(0.0, PEERS)
    assert new.peer != old.peer and f.statistics().in_flight == 2
    assert f.on_response(old, found(blob), 0.0).result is None  # stale: ignored
    assert bh in f and f.statistics().in_flight == 1
    f.abandon(new)  # the driver found the blob already held
    assert bh not in f and f.statistics().in_flight == 0


# --- the server core ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_server_answers_validators_only_with_a_rate_limit() -> None:
    _rid, blob, bh = sealed()
    held = {bh: blob}
    clock = Clock()
    server = BlobServer(PEERS, held.get, clock, ServeSettings(rate_per_s=2.0, burst=3))
    ask = codec.encode(BlobRequest(bh))

    def answer(peer: bytes, request: bytes = ask) -> BlobResponse:
        return codec.decode(server.handle(peer, request), BlobResponse)

    assert answer(b"\x09" * 32).status == REFUSED  # not a validator
    assert [answer(PEERS[0]).status for _ in range(4)] == [FOUND] * 3 + [RATE_LIMITED]
    assert answer(PEERS[0]).blob is None
    assert answer(PEERS[1]) == BlobResponse(FOUND, blob)  # buckets are per peer
    clock.now += 0.5  # one token back at 2/s
    assert answer(PEERS[0]).status == FOUND
    assert answer(PEERS[0]).status == RATE_LIMITED
    clock.now += 10
    assert answer(PEERS[2], codec.encode(BlobRequest(b"\x01" * 32))).status == NOT_FOUND
    assert answer(PEERS[2], b"\xc1").status == MALFORMED
    assert answer(PEERS[2], codec.encode(BlobRequest(b"short"))).status == MALFORMED
    st = server.statistics()
    assert (st.sent, st.rate_limited, st.refused, st.not_found, st.malformed) == (5, 3, 1, 1, 2)


def test_server_does_not_send_a_blob_over_its_frame_limit() -> None:
    _rid, blob, bh = sealed()
    server = BlobServer(PEERS, {bh: blob}.get, Clock(), ServeSettings(max_blob_bytes=len(blob) - 1))
    reply = codec.decode(server.handle(PEERS[0], codec.encode(BlobRequest(bh))), BlobResponse)
    assert reply.status == NOT_FOUND


# --- committed-state rules ---------------------------------------------------------------


def anchor(world: World, *, keep_blob: bool = True) -> tuple[bytes, bytes, bytes]:
    rid = os.urandom(16)
    readers = canonical_readers([world.p.public_key, world.a.public_key])
    blob, bh, _ = seal_record(PLAIN, rid, readers)
    body = AnchorRecord(rid, world.p.public_key, "vital-signs", world.a.public_key, bh, readers)
    _, code = world.chain.run(world.d1, body, blob if keep_blob else None)
    assert code == "OK"
    return rid, blob, bh


def test_only_committed_unerased_blobs_are_served() -> None:
    world = World()
    store = world.chain.store
    rid, blob, bh = anchor(world)
    assert servable_blob(store, bh) == blob
    _pending_rid, pending_blob, pending_bh = sealed()
    store.put_blobs([(pending_bh, pending_blob)])  # held for a tx not committed
    assert servable_blob(store, pending_bh) is None
    assert servable_blob(store, b"\x07" * 32) is None
    world.chain.run(world.p, EraseRecord(rid))
    assert not store.has_blob(bh)
    store.put_blobs([(bh, blob)])  # even if a copy came back: the record is erased
    assert servable_blob(store, bh) is None


def test_scan_finds_the_missing_blobs_of_unerased_records() -> None:
    world = World()
    store = world.chain.store
    anchor(world)  # held
    missing = [anchor(world, keep_blob=False) for _ in range(3)]
    erased_rid, _, _ = anchor(world, keep_blob=False)
    world.chain.run(world.p, EraseRecord(erased_rid))
    found_all, complete = scan_missing_blobs(store, limit=10)
    assert complete
    assert sorted(found_all) == sorted((bh, rid) for rid, _, bh in missing)
    some, complete = scan_missing_blobs(store, limit=2)
    assert len(some) == 2 and not complete


def test_a_fetched_blob_is_placed_only_while_its_record_references_it() -> None:
    world = World()
    store = world.chain.store
    rid, blob, bh = anchor(world, keep_blob=False)
    other_rid, other_blob, other_bh = sealed()
    assert not place_blob(store, other_bh, other_rid, other_blob)  # never committed
    assert not place_blob(store, other_bh, rid, other_blob)  # not this record's blob
    assert not store.has_blob(other_bh)
    assert place_blob(store, bh, rid, blob) and store.get_blob(bh) == blob
    gone_rid, gone_blob, gone_bh = anchor(world, keep_blob=False)
    world.chain.run(world.p, EraseRecord(gone_rid))
    assert not place_blob(store, gone_bh, gone_rid, gone_blob)
    assert not store.has_blob(gone_bh)


# --- the service over an in-memory link --------------------------------------------------

Handler = Callable[[bytes, bytes], Awaitable[bytes]]


class Link:
    """The wire between fake transports: a handler per reachable node."""

    def __init__(self) -> None:
        self.handlers: dict[bytes, Handler] = {}


class LinkTransport:
    """:class:`~node.clinical.blobfetch_service.RequestTransport` over a :class:`Link`."""

    def __init__(self, link: Link, me: bytes, validators: list[bytes]) -> None:
        self.link = link
        self.me = me
        self.peers = [v for v in validators if v != me]
        self.asked: list[bytes] = []

    def connected_peers(self) -> list[bytes]:
        return [p for p in self.peers if p in self.link.handlers]

    def set_request_handler(self, handler: Handler, *, protocol: Any = SYNC_PROTOCOL) -> None:
        assert protocol == BLOB_PROTOCOL
        self.link.handlers[self.me] = handler

    async def request(
        self, public_key: bytes, data: bytes, *, timeout: float = 10.0, protocol: Any = None
    ) -> bytes:
        assert protocol == BLOB_PROTOCOL
        self.asked.append(public_key)
        handler = self.link.handlers.get(public_key)
        await trio.lowlevel.checkpoint()
        if handler is None:
            raise PeerUnavailableError("down")
        return await handler(self.me, data)


class Twins:
    """Two in-memory chains with the same committed blocks; ``b`` may lack blobs."""

    def __init__(self) -> None:
        self.a = World()
        self.b = World(MiniChain())
        self.validators = [k.public_key for k in self.a.chain.orgs]
        assert self.a.chain.store.state_root() == self.b.chain.store.state_root()

    def anchor(self, *, b_gets_blob: bool = False) -> tuple[bytes, bytes, bytes, CommitInfo]:
        """Commit one record on both; only ``a`` (and ``b`` if asked) stores its blob."""
        w = self.a
        rid = os.urandom(16)
        readers = canonical_readers([w.p.public_key, w.a.public_key])
        blob, bh, _ = seal_record(PLAIN, rid, readers)
        body = AnchorRecord(rid, w.p.public_key, "vital-signs", w.a.public_key, bh, readers)
        tx = w.chain.tx(w.d1, body)
        w.chain.commit([(tx, blob)])
        result = self.b.chain.commit([(tx, blob if b_gets_blob else None)])
        store = self.b.chain.store
        height = store.latest_height()
        assert height is not None and store.state_root() == w.chain.store.state_root()
        raw = store.get_block_bytes(height)
        assert raw is not None
        block = codec.decode(raw, Block)
        missing = () if b_gets_blob else (bh,)
        return rid, blob, bh, CommitInfo(height, block.hash(), block, result, missing)


def service(
    world: World, link: Link, me: bytes, validators: list[bytes], metrics: NodeMetrics
) -> tuple[BlobFetchService, LinkTransport]:
    transport = LinkTransport(link, me, validators)
    fast = FetchSettings(backoff_initial_s=0.01, backoff_max_s=0.05, max_rounds=1000)
    return (
        BlobFetchService(world.chain.store, transport, validators, metrics=metrics, settings=fast),
        transport,
    )


def fetch_count(metrics: NodeMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("medledger_blob_fetch_total", {"result": result})
    return value or 0.0


async def test_service_fetches_on_start_and_after_commit_and_never_keeps_a_lie() -> None:
    twins = Twins()
    link = Link()
    va, vb, vc, _vd = twins.validators  # vd never comes up
    _early_rid, early_blob, early_bh, _ = twins.anchor()  # b lacks it before starting
    ma, mb = NodeMetrics(), NodeMetrics()
    svc_a, _ = service(twins.a, link, va, twins.validators, ma)
    svc_b, tb = service(twins.b, link, vb, twins.validators, mb)

    async def liar(peer: bytes, request: bytes) -> bytes:
        _, other_blob, _ = sealed()
        return found(other_blob)

    store_b = twins.b.chain.store
    async with trio.open_nursery() as nursery:
        link.handlers[vc] = liar  # at first the only peer up is a liar
        await nursery.start(svc_b.run)
        await wait_until(lambda: fetch_count(mb, "invalid") >= 2, "the lie to be refused")
        assert not store_b.has_blob(early_bh)
        assert set(tb.asked) == {vc}

        await nursery.start(svc_a.run)  # an honest holder comes up: the start-up scan's want
        await wait_until(lambda: store_b.has_blob(early_bh), "the blob wanted at start")
        assert store_b.get_blob(early_bh) == early_blob

        _rid, blob, bh, info = twins.anchor()  # committed on b without its blob
        svc_b.on_commit(info)
        await wait_until(lambda: store_b.has_blob(bh), "the blob missing from a commit")
        assert store_b.get_blob(bh) == blob
        assert svc_b.placed == 2 and fetch_count(mb, "ok") == 2
        sent = ma.registry.get_sample_value(
            "medledger_blob_requests_served_total", {"result": "sent"}
        )
        assert sent == 2
        assert mb.registry.get_sample_value("medledger_blob_fetch_missing") == 0
        nursery.cancel_scope.cancel()


async def test_a_read_of_a_missing_blob_is_a_503_that_starts_its_fetch() -> None:
    twins = Twins()
    link = Link()
    va, vb, _, _ = twins.validators
    rid, _, bh, _ = twins.anchor()
    wb = twins.b
    txh, code = wb.chain.run(wb.p, RecordAccess(rid, "TREAT", None, None))
    assert code == "OK"
    svc_a, _ = service(twins.a, link, va, twins.validators, NodeMetrics())
    svc_b, _ = service(wb, link, vb, twins.validators, NodeMetrics())
    index = PatientIndex()
    index.catch_up(wb.chain.store)
    reads = ClinicalReads(
        wb.chain.store,
        wb.chain.genesis.policy.break_glass(),
        index,
        clock_ms=lambda: wb.chain.time_ms,
    )
    parts = ClinicalParts(index, reads, cast(Any, None), cast(Any, None), svc_b)
    app = create_app(
        ReadFacade(parts), ApiSettings(), metrics=NodeMetrics(), clock_ms=lambda: NOW_MS
    )
    path = f"/v1/records/{rid.hex()}?access={txh.hex()}"

    def signed(ts_offset: int) -> dict[str, str]:
        return sign_request(wb.p, "GET", path, timestamp_ms=NOW_MS + ts_offset)

    asgi = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=asgi, base_url="http://n") as http:
        r = await http.get(path, headers=signed(0))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "BLOB_UNAVAILABLE"
        assert bh in svc_b.fetcher  # the read itself asked for the blob
        async with trio.open_nursery() as nursery:
            await nursery.start(svc_a.run)
            await nursery.start(svc_b.run)
            await wait_until(lambda: wb.chain.store.has_blob(bh), "the blob to be fetched")
            nursery.cancel_scope.cancel()
        r = await http.get(path, headers=signed(1))
        assert r.status_code == 200, r.text
        answer = r.json()
    key = envelope.unwrap_key(bytes.fromhex(answer["sealed_key"]), wb.p)
    nonce, ct = bytes.fromhex(answer["nonce"]), bytes.fromhex(answer["ciphertext"])
    assert envelope.decrypt_record(key, nonce, ct, rid) == PLAIN


class ReadFacade(FakeFacade):
    """The API's facade with the node's real record-read path."""

    def __init__(self, parts: ClinicalParts) -> None:
        super().__init__(NodeMetrics())
        self.parts = parts

    async def read_record(self, record_id: bytes, reader: bytes, access_tx: bytes | None) -> object:
        return await self.parts.read_record(record_id, reader, access_tx)


# --- serving peers off the event loop ----------------------------------------------------


class BlockingBlobStore:
    """A chain's store whose ``get_blob`` waits for the test's go-ahead and notes its thread.

    Were the lookup on the Trio thread, the test could never give the
    go-ahead: the wait gives up after 5 s and fails the request instead of
    hanging the run.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_blob(self, blob_hash: bytes) -> bytes | None:
        self.threads.append(threading.get_ident())
        self.entered.set()
        if not self.release.wait(5.0):
            raise AssertionError("blob lookup never released: it ran on the event loop")
        blob: bytes | None = self._store.get_blob(blob_hash)
        return blob


def serving_node(
    world: World, store: Any, serve: ServeSettings | None = None
) -> tuple[BlobFetchService, Link, list[bytes]]:
    """A blob service for validator 0 of ``world`` on a fresh link (nobody else on it)."""
    validators = [k.public_key for k in world.chain.orgs]
    link = Link()
    transport = LinkTransport(link, validators[0], validators)
    svc = BlobFetchService(store, transport, validators, metrics=NodeMetrics(), serve=serve)
    return svc, link, validators


async def test_a_peer_is_served_by_a_worker_thread_while_the_event_loop_runs() -> None:
    world = World()
    _rid, blob, bh = anchor(world)
    store = BlockingBlobStore(world.chain.store)
    svc, link, validators = serving_node(world, store)
    answers: list[bytes] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        handler = link.handlers[validators[0]]

        async def ask() -> None:
            answers.append(await handler(validators[1], codec.encode(BlobRequest(bh))))

        nursery.start_soon(ask)
        # This task runs while the lookup waits: the event loop is free.
        await wait_until(store.entered.is_set, "the lookup to start")
        assert not answers
        store.release.set()
        await wait_until(lambda: bool(answers), "the answer")
        nursery.cancel_scope.cancel()
    assert codec.decode(answers[0], BlobResponse) == BlobResponse(FOUND, blob)
    assert store.threads and threading.get_ident() not in store.threads


async def test_the_serving_rate_limit_runs_on_the_trio_clock(
    mock_clock: trio.testing.MockClock,
) -> None:
    world = World()
    _rid, _blob, bh = anchor(world)
    svc, link, validators = serving_node(
        world, world.chain.store, ServeSettings(rate_per_s=2.0, burst=3)
    )
    ask = codec.encode(BlobRequest(bh))
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        handler = link.handlers[validators[0]]

        async def status_of(peer: bytes) -> int:
            return codec.decode(await handler(peer, ask), BlobResponse).status

        assert [await status_of(validators[1]) for _ in range(4)] == [FOUND] * 3 + [RATE_LIMITED]
        assert await status_of(validators[2]) == FOUND  # buckets are per peer
        mock_clock.jump(0.5)  # one token back at 2/s, on the Trio clock
        assert [await status_of(validators[1]) for _ in range(2)] == [FOUND, RATE_LIMITED]
        assert await status_of(b"\x09" * 32) == REFUSED
        nursery.cancel_scope.cancel()
    st = svc.server.statistics()
    assert (st.sent, st.rate_limited, st.refused) == (5, 2, 1)


# --- the real transport ------------------------------------------------------------------


async def test_blob_protocol_runs_on_its_own_libp2p_streams() -> None:
    from tests.node.test_p2p import cluster

    async with cluster(2) as c:
        server, client = c.nodes

        async def sync_handler(peer: bytes, request: bytes) -> bytes:
            return b"sync:" + request

        async def blob_handler(peer: bytes, request: bytes) -> bytes:
            return b"blob:" + request

        server.transport.set_request_handler(sync_handler)
        with pytest.raises(PeerUnavailableError):  # no blob handler there yet: refused, typed
            await client.transport.request(
                server.key.public_key, b"1", timeout=10, protocol=BLOB_PROTOCOL
            )
        server.transport.set_request_handler(blob_handler, protocol=BLOB_PROTOCOL)
        for i in range(5):
            got_sync = await client.transport.request(server.key.public_key, b"%d" % i, timeout=10)
            got_blob = await client.transport.request(
                server.key.public_key, b"%d" % i, timeout=10, protocol=BLOB_PROTOCOL
            )
            assert (got_sync, got_blob) == (b"sync:%d" % i, b"blob:%d" % i)
        with pytest.raises(ValueError):
            server.transport.set_request_handler(blob_handler, protocol=cast(Any, "/other/1"))
