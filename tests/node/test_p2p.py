"""The libp2p transport, in-process on loopback with OS-chosen ports.

Every wait is on a condition with a deadline (``wait_until``), never a fixed
sleep. Keys come from fixed seeds, so a failure names the same peers each run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from libp2p.peer.peerstore import PeerStoreError

from ledger.errors import TooLargeError
from ledger.keys import KeyPair
from node.config import HostPort, P2PConfig, test_defaults
from node.p2p import (
    FrameError,
    FrameReader,
    FrameTooLargeError,
    PeerUnavailableError,
    Transport,
    encode_frame,
    peer_id_from_public_key,
)
from node.p2p._transport import GOSSIP_STALL_S

DEADLINE_S = 20.0
CHAIN = "p2p-test"


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``condition`` every 10 ms until true; fail with ``what`` after ``timeout``."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- framing (no network) ----------------------------------------------------------------


class FakeStream:
    def __init__(self, data: bytes, chunk: int) -> None:
        self.data = data
        self.chunk = chunk

    async def read(self, n: int | None = None) -> bytes:
        size = min(self.chunk, n or self.chunk)
        out, self.data = self.data[:size], self.data[size:]
        return out


@pytest.mark.parametrize("chunk", [1, 3, 1000])
async def test_frames_roundtrip_across_any_chunking(chunk: int) -> None:
    payloads = [b"", b"a", b"x" * 127, b"y" * 128, b"z" * 70_000]
    reader = FrameReader(FakeStream(b"".join(map(encode_frame, payloads)), chunk), 100_000)
    got = []
    while (frame := await reader.read_frame()) is not None:
        got.append(frame)
    assert got == payloads


async def test_frame_limits_and_truncation() -> None:
    with pytest.raises(FrameTooLargeError):
        await FrameReader(FakeStream(encode_frame(b"x" * 11), 100), 10).read_frame()
    with pytest.raises(FrameError, match="inside a frame"):
        await FrameReader(FakeStream(encode_frame(b"abcdef")[:-2], 100), 10).read_frame()
    with pytest.raises(FrameError, match="varint too long"):
        await FrameReader(FakeStream(b"\xff" * 11, 100), 10).read_frame()


def test_send_queue_drops_oldest_and_counts() -> None:
    keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(2)]
    cfg = dataclasses.replace(test_defaults().p2p, send_queue_size=5)
    t = Transport(cfg, keys[0], {k.public_key: None for k in keys}, chain_id=CHAIN)
    results = [t.send_to(keys[1].public_key, b"%d" % i) for i in range(8)]
    assert results == [True] * 5 + [False] * 3
    stats = t.statistics()
    assert stats.frames_dropped_queue_full == 3
    assert stats.peers[0].queued == 5 and stats.peers[0].frames_dropped == 3
    with pytest.raises(TooLargeError):
        t.send_to(keys[1].public_key, b"x" * (cfg.max_message_bytes + 1))
    with pytest.raises(KeyError):
        t.send_to(b"\x00" * 32, b"who?")


# --- a cluster of transports --------------------------------------------------------------


@dataclass
class Node:
    key: KeyPair
    transport: Transport
    address: HostPort
    scope: trio.CancelScope


class Cluster:
    def __init__(
        self, nursery: trio.Nursery, n: int, psk: bytes | None, listen_host: str = "127.0.0.1"
    ) -> None:
        self.nursery = nursery
        self.listen_host = listen_host
        self.keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
        self.psk = psk
        self.config: P2PConfig = dataclasses.replace(
            test_defaults().p2p, private_network=psk is not None
        )
        self.nodes: list[Node] = []

    def validators(self) -> dict[bytes, HostPort | None]:
        return {k.public_key: None for k in self.keys}

    async def start_node(self, key: KeyPair, port: int = 0, **kw: Any) -> Node:
        cfg = dataclasses.replace(self.config, listen=HostPort(self.listen_host, port))
        validators = kw.pop("validators", None) or self.validators()
        t = Transport(cfg, key, validators, chain_id=CHAIN, private_network_key=self.psk, **kw)
        scope = trio.CancelScope()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await t.run(task_status=task_status)

        address: HostPort = await self.nursery.start(run)
        return Node(key, t, address, scope)

    def introduce(self) -> None:
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    a.transport.set_peer_address(b.key.public_key, dialable(b.address))

    async def wait_connected(self) -> None:
        n = len(self.nodes) - 1
        await wait_until(
            lambda: all(len(x.transport.connected_peers()) == n for x in self.nodes),
            "every node connected to every other",
        )


def dialable(address: HostPort) -> HostPort:
    """Where to dial a node of this process: loopback, also when it listens on 0.0.0.0."""
    return HostPort("127.0.0.1", address.port)


@asynccontextmanager
async def cluster(
    n: int = 4, psk: bytes | None = None, listen_host: str = "127.0.0.1"
) -> AsyncIterator[Cluster]:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, n, psk, listen_host)
        for key in c.keys:
            c.nodes.append(await c.start_node(key))
        c.introduce()
        await c.wait_connected()
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()


async def receive_n(t: Transport, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    with trio.fail_after(DEADLINE_S):
        for _ in range(n):
            out.append(await t.messages.receive())
    return out


async def test_direct_frames_arrive_in_order_at_the_right_peer() -> None:
    async with cluster(4, psk=b"\x42" * 32) as c:
        per_pair = 50
        for a in c.nodes:
            for b in c.nodes:
                if a is not b:
                    for i in range(per_pair):
                        a.transport.send_to(
                            b.key.public_key,
                            b"%s>%s:%d"
                            % (
                                a.key.public_key.hex()[:4].encode(),
                                b.key.public_key.hex()[:4].encode(),
                                i,
                            ),
                        )
        for b in c.nodes:
            got = await receive_n(b.transport, per_pair * 3)
            me = b.key.public_key.hex()[:4].encode()
            for a in c.nodes:
                if a is b:
                    continue
                frames = [d for sender, d in got if sender == a.key.public_key]
                src = a.key.public_key.hex()[:4].encode()
                assert frames == [b"%s>%s:%d" % (src, me, i) for i in range(per_pair)]
        stats = c.nodes[0].transport.statistics()
        assert stats.frames_sent == per_pair * 3
        assert stats.frames_received == per_pair * 3
        assert stats.frames_dropped_queue_full == 0 and stats.frames_lost_send_error == 0
        assert stats.peers_connected == 3 and stats.peers_rejected == 0


async def test_broadcast_reaches_every_other_validator_and_self_send_is_local() -> None:
    async with cluster(4) as c:
        src = c.nodes[1]
        assert src.transport.broadcast(b"hello all") == 3
        for node in c.nodes:
            if node is not src:
                assert await receive_n(node.transport, 1) == [(src.key.public_key, b"hello all")]
        assert src.transport.send_to(src.key.public_key, b"me") is True
        assert await receive_n(src.transport, 1) == [(src.key.public_key, b"me")]


async def test_gossiped_batch_reaches_every_validator() -> None:
    async with cluster(4) as c:
        await wait_until(
            lambda: all(n.transport.statistics().gossip_mesh_peers == 3 for n in c.nodes),
            "a full gossipsub mesh on every node",
        )
        src = c.nodes[2]
        batch = b"B" * 60_000
        await src.transport.publish_batch(batch)
        for node in c.nodes:
            if node is src:
                continue
            with trio.fail_after(DEADLINE_S):
                origin, data = await node.transport.batches.receive()
            assert (origin, data) == (src.key.public_key, batch)
        assert src.transport.statistics().gossip_published == 1
        with pytest.raises(TooLargeError):
            await src.transport.publish_batch(b"x" * (c.config.gossip_batch_bytes + 1))


async def test_gossip_sends_own_batches_to_all_and_relays_none() -> None:
    """Origin-only gossip: in a full mesh of validators a relayed batch is a duplicate."""
    async with cluster(4) as c:
        await wait_until(
            lambda: all(n.transport.statistics().gossip_mesh_peers == 3 for n in c.nodes),
            "a full gossipsub mesh on every node",
        )
        node = c.nodes[0]
        router = node.transport._router
        assert router is not None and router.pubsub is not None
        me, other = router.pubsub.my_id, c.nodes[1].transport._router.pubsub.my_id  # type: ignore[union-attr]
        topic = node.transport._topic
        assert len(set(router._get_peers_to_send([topic], msg_forwarder=me, origin=me))) == 3
        assert not set(router._get_peers_to_send([topic], msg_forwarder=other, origin=other))
        # end to end: every peer still gets each origin's batch exactly once
        for i, src in enumerate(c.nodes):
            await src.transport.publish_batch(b"from %d" % i)
        for dst in c.nodes:
            got = []
            with trio.fail_after(DEADLINE_S):
                for _ in range(3):
                    got.append(await dst.transport.batches.receive())
            assert sorted(d for _, d in got) == sorted(
                b"from %d" % i for i, n in enumerate(c.nodes) if n is not dst
            )


class _FakeQueue:
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class _FakePubsub:
    """Only what ``Transport._wait_gossip_room`` reads: per-peer outbound queues (32 slots)."""

    def __init__(self, **queues: int) -> None:
        self.peer_queues = {peer: _FakeQueue(n) for peer, n in queues.items()}


def test_gossip_waits_for_a_congested_peer_but_not_for_a_stalled_one() -> None:
    me = KeyPair.from_seed(b"\x01" * 32)
    t = Transport(test_defaults().p2p, me, {me.public_key: None}, chain_id=CHAIN)
    clock = trio.testing.MockClock(autojump_threshold=0)
    returned: list[float] = []

    async def main() -> None:
        pubsub: Any = _FakePubsub(a=0, b=31)  # b is congested

        async def publisher() -> None:
            await t._wait_gossip_room(pubsub)
            returned.append(trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.sleep(1.0)
            assert returned == []  # a congested peer is waited for ...
            pubsub.peer_queues["b"].length = 0
            await trio.sleep(0.01)
            assert returned == [pytest.approx(1.0, abs=0.01)]  # ... until it drains
        pubsub.peer_queues["b"].length = 32  # now b never drains (a paused validator)
        start = trio.current_time()
        with trio.fail_after(60):  # virtual seconds: a publisher waiting for ever fails here
            await t._wait_gossip_room(pubsub)
        assert trio.current_time() - start == pytest.approx(GOSSIP_STALL_S, abs=0.01)
        await t._wait_gossip_room(pubsub)  # stalled: no more waiting for it
        assert trio.current_time() - start == pytest.approx(GOSSIP_STALL_S, abs=0.01)
        assert t.statistics().gossip_stalled_peer_sends == 2
        pubsub.peer_queues["b"].length = 0  # it came back: its clock starts afresh
        await t._wait_gossip_room(pubsub)
        pubsub.peer_queues["b"].length = 32
        mark = trio.current_time()
        await t._wait_gossip_room(pubsub)
        assert trio.current_time() - mark == pytest.approx(GOSSIP_STALL_S, abs=0.01)

    trio.run(main, clock=clock)


async def test_batch_validator_rejects_and_counts() -> None:
    async with trio.open_nursery() as nursery:
        c = Cluster(nursery, 2, None)
        c.nodes.append(await c.start_node(c.keys[0]))
        c.nodes.append(
            await c.start_node(c.keys[1], batch_validator=lambda origin, data: data != b"bad")
        )
        c.introduce()
        await c.wait_connected()
        await wait_until(
            lambda: all(n.transport.statistics().gossip_mesh_peers == 1 for n in c.nodes),
            "mesh",
        )
        await c.nodes[0].transport.publish_batch(b"bad")
        await c.nodes[0].transport.publish_batch(b"good")
        with trio.fail_after(DEADLINE_S):
            assert await c.nodes[1].transport.batches.receive() == (c.keys[0].public_key, b"good")
        assert c.nodes[1].transport.statistics().gossip_rejected == 1
        nursery.cancel_scope.cancel()


async def test_non_validator_is_refused_and_counted() -> None:
    psk = b"\x11" * 32
    async with cluster(2, psk=psk) as c:
        target = c.nodes[0]
        outsider_key = KeyPair.from_seed(b"\x99" * 32)
        # The outsider knows the network key and believes target is a peer of its own.
        outsider = await c.start_node(
            outsider_key,
            validators={outsider_key.public_key: None, target.key.public_key: target.address},
        )
        outsider.transport.send_to(target.key.public_key, b"let me in")
        await wait_until(
            lambda: target.transport.statistics().peers_rejected >= 1, "the outsider to be refused"
        )
        # Validators still talk; nothing from the outsider was delivered.
        c.nodes[1].transport.send_to(target.key.public_key, b"from a validator")
        assert await receive_n(target.transport, 1) == [
            (c.nodes[1].key.public_key, b"from a validator")
        ]
        assert target.transport.connected_peers() == [c.nodes[1].key.public_key]
        outsider.scope.cancel()


async def test_without_the_network_key_nobody_connects() -> None:
    async with cluster(2, psk=b"\x11" * 32) as c:
        target = c.nodes[0]
        c.psk = b"\x22" * 32  # a different private network
        stranger = await c.start_node(
            c.keys[1],  # even with a validator's identity
            validators={c.keys[1].public_key: None, target.key.public_key: target.address},
        )
        await wait_until(
            lambda: stranger.transport.statistics().dial_failures >= 1, "a failed dial"
        )
        assert stranger.transport.connected_peers() == []
        stranger.scope.cancel()


async def test_restarted_host_is_redialled() -> None:
    async with cluster(4) as c:
        victim = c.nodes[3]
        sender = c.nodes[0]
        sender.transport.send_to(victim.key.public_key, b"before")
        assert await receive_n(victim.transport, 1) == [(sender.key.public_key, b"before")]
        dials_before = sum(n.transport.statistics().dials for n in c.nodes[:3])

        victim.scope.cancel()
        await wait_until(
            lambda: victim.key.public_key not in sender.transport.connected_peers(),
            "the survivors to notice the stop",
        )
        restarted = await c.start_node(victim.key, port=victim.address.port)
        c.nodes[3] = restarted
        await c.wait_connected()
        # Whichever side of each pair dials (the smaller key), a new dial happened.
        assert sum(n.transport.statistics().dials for n in c.nodes) > dials_before

        sender.transport.send_to(victim.key.public_key, b"after")
        got = await receive_n(restarted.transport, 1)
        assert got == [(sender.key.public_key, b"after")]


def _advertised_only(t: Transport, peer: KeyPair, configured: HostPort) -> bool:
    """Whether ``t``'s libp2p peerstore knows ``peer`` only at addresses it advertised."""
    try:
        addrs = [
            str(a) for a in t._host.get_peerstore().addrs(peer_id_from_public_key(peer.public_key))
        ]
    except PeerStoreError:
        return False
    return bool(addrs) and not any(a.startswith(configured.multiaddr()) for a in addrs)


async def test_peer_is_redialled_at_its_configured_address_not_the_advertised_one() -> None:
    """Reproduces the docker perturbation failure (issue 5) without docker.

    Every gossipsub RPC carries its sender's signed peer record, and py-libp2p
    then replaces the peerstore's addresses of that peer with the record's, the
    addresses the peer advertises for itself. A node listening on 0.0.0.0
    advertises ``/ip4/0.0.0.0/tcp/PORT``; in a container every node listens on
    0.0.0.0:26656, which from any other container is the dialler itself, so the
    re-dial after a peer restarted reached our own listener and failed the Noise
    handshake. Here the advertised address is stale instead of ours: the victim
    comes back on a new port and knows nobody's address, so only the survivors'
    dials, to the address the operator configured, can bring it back.
    """
    async with cluster(4, listen_host="0.0.0.0") as c:
        victim = c.nodes[3]
        survivors = c.nodes[:3]
        old = dialable(victim.address)

        async def records_consumed() -> None:
            with trio.fail_after(DEADLINE_S):
                while not all(_advertised_only(s.transport, victim.key, old) for s in survivors):
                    await victim.transport.publish_batch(b"my signed peer record rides along")
                    await trio.sleep(0.05)

        await records_consumed()
        victim.scope.cancel()
        await wait_until(
            lambda: all(
                victim.key.public_key not in s.transport.connected_peers() for s in survivors
            ),
            "the survivors to notice the stop",
        )
        alone = {k.public_key: None for k in c.keys}
        restarted = await c.start_node(victim.key, validators=alone)
        assert restarted.address.port != old.port
        c.nodes[3] = restarted
        for s in survivors:
            s.transport.set_peer_address(victim.key.public_key, dialable(restarted.address))
        await c.wait_connected()
        survivors[0].transport.send_to(victim.key.public_key, b"found you")
        assert await receive_n(restarted.transport, 1) == [
            (survivors[0].key.public_key, b"found you")
        ]


async def test_request_response_on_a_reused_stream() -> None:
    async with cluster(2) as c:
        server, client = c.nodes
        seen: list[bytes] = []

        async def handler(peer: bytes, request: bytes) -> bytes:
            seen.append(peer)
            return b"re:" + request

        server.transport.set_request_handler(handler)
        for i in range(20):
            reply = await client.transport.request(server.key.public_key, b"q%d" % i, timeout=10)
            assert reply == b"re:q%d" % i
        assert seen == [client.key.public_key] * 20
        assert server.transport.statistics().requests_served == 20
        # No handler on the other side: a typed error, not a hang or a crash.
        with pytest.raises(PeerUnavailableError):
            await server.transport.request(client.key.public_key, b"?", timeout=10)
        assert server.transport.statistics().requests_failed == 1
        with pytest.raises(PeerUnavailableError):
            await client.transport.request(b"\x00" * 32, b"?", timeout=1)


def test_transport_from_config_applies_peer_overrides(tmp_path: Any) -> None:
    from node.config import Config, PeerAddress
    from node.config import ConfigError as CE
    from node.genesis_file import GenesisDoc, OrganisationEntry, ValidatorEntry, peer_id_of
    from node.p2p import transport_from_config, validator_addresses

    keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]
    genesis = GenesisDoc(
        chain_id="c",
        genesis_time_ms=0,
        organisations=(OrganisationEntry("h", keys[0].public_key),),
        validators=tuple(
            ValidatorEntry(k.public_key, peer_id_of(k.public_key), HostPort("127.0.0.1", 1 + i))
            for i, k in enumerate(keys)
        ),
        private_network_key=b"\x01" * 32,
    )
    moved = PeerAddress(keys[2].public_key, HostPort("node2", 26656))
    cfg = Config(p2p=dataclasses.replace(Config().p2p, peers=(moved,)), source="n.toml")
    addrs = validator_addresses(cfg, genesis)
    assert addrs[keys[2].public_key] == HostPort("node2", 26656)
    assert addrs[keys[1].public_key] == HostPort("127.0.0.1", 2)
    t = transport_from_config(cfg, genesis, keys[0])
    assert t.public_key == keys[0].public_key

    stranger = KeyPair.from_seed(b"\x77" * 32)
    with pytest.raises(CE, match="is not a validator"):
        transport_from_config(cfg, genesis, stranger)
    bad = Config(
        p2p=dataclasses.replace(
            Config().p2p, peers=(PeerAddress(stranger.public_key, HostPort("x", 1)),)
        ),
        source="n.toml",
    )
    with pytest.raises(CE, match=r"n.toml: p2p.peers: .* is not a validator"):
        validator_addresses(bad, genesis)
    no_pnet = dataclasses.replace(genesis, private_network_key=None)
    with pytest.raises(CE, match=r"p2p\.private_network: is true"):
        transport_from_config(cfg, no_pnet, keys[0])
