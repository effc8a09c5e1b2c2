"""The validators' network: direct streams for PBFT, request/response for state
transfer, gossipsub for transaction batches.

Why this shape (figures in ``LIBP2P_NOTES.md``): a persistent, varint-framed
stream per peer carries over a thousand messages a second where gossipsub
carries a few hundred, and gossipsub cannot address one peer. So PBFT messages
go on one long-lived outbound stream per peer (protocol
``/medledger/consensus/1``); state transfer is request/response on one reused
stream per peer (``/medledger/sync/1``), and so is the fetch of a record's
blob (``/medledger/blob/1``, a stream of its own so that a large answer on one
never queues behind the other); and only client transactions, in batches,
ride gossipsub.

Gossip is origin-only: a node sends its own batches to every validator and
forwards nobody else's (:class:`_OriginOnlyGossipSub`). The validators are a
full mesh of direct connections, so a forwarded copy reached peers that had
the batch from its origin already: each node received every batch n - 1
times and spent the decryption, parsing and peer-record check on each copy
(measured: 1,209-1,531 -> 1,691-1,692 committed tx/s with 4 validators).
What forwarding also gave, a path around one broken link, comes from the
mempool instead: txs pending for long are announced again by every node that
holds them (:meth:`node.mempool.Mempool.reannounce_stale`).

Backpressure and loss are explicit, never silent:

* ``send_to`` / ``broadcast`` never block: each peer has a bounded queue, and
  when it is full the **oldest** frame is dropped and counted (PBFT
  retransmits, and a newer message supersedes an older one far more often than
  the reverse). A frame lost with a broken stream is counted too.
* Received frames go to a bounded channel; when the owner is slow the reading
  task blocks, which stalls that peer's stream (yamux flow control) rather
  than buffering without bound.
* ``publish_batch`` waits for room in a bounded queue, and the publishing task
  waits until every peer's gossipsub outbound queue has room, because
  gossipsub drops silently when that queue is full; a peer congested for
  ``GOSSIP_STALL_S`` (paused, wedged) is not waited for, and what it then
  misses is counted.

Only genesis validators may take part: every inbound connection from a peer
id outside the allow-list is closed (and counted), every stream handler checks
the peer again, and the gossip validator checks both the forwarder and the
origin of each batch. With a private-network key set, outsiders do not get as
far as a libp2p handshake.

Lifetime: :meth:`Transport.run` is a Trio service started with
``await nursery.start(transport.run)``; it reports the bound listen address
through ``task_status.started()`` and stops, closing every stream and
connection, when its nursery is cancelled.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.network.exceptions import RateLimitError
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from ledger.errors import LedgerError, TooLargeError
from ledger.keys import KeyPair
from node.config import Config, ConfigError, HostPort, P2PConfig
from node.genesis_file import GenesisDoc
from node.p2p._framing import FrameError, FrameReader, encode_frame
from node.p2p._host import build_host, cache_advertised_addrs, peer_id_from_public_key

__all__ = [
    "BLOB_PROTOCOL",
    "CONSENSUS_PROTOCOL",
    "SYNC_PROTOCOL",
    "TX_PUSH_PROTOCOL",
    "PeerStatistics",
    "PeerUnavailableError",
    "Transport",
    "TransportStatistics",
    "gossip_topic",
    "transport_from_config",
    "validator_addresses",
]

log = logging.getLogger(__name__)

CONSENSUS_PROTOCOL = TProtocol("/medledger/consensus/1")
SYNC_PROTOCOL = TProtocol("/medledger/sync/1")
BLOB_PROTOCOL = TProtocol("/medledger/blob/1")
#: Txs too large for a gossip message, pushed to each validator (node.txpush).
TX_PUSH_PROTOCOL = TProtocol("/medledger/txpush/1")
#: Request/response protocols served through :meth:`Transport.set_request_handler`.
REQUEST_PROTOCOLS: tuple[TProtocol, ...] = (SYNC_PROTOCOL, BLOB_PROTOCOL, TX_PUSH_PROTOCOL)

#: Gossipsub's own limit on one RPC (LIBP2P_NOTES pitfall 8: larger is dropped silently).
GOSSIP_MAX_RPC_BYTES = 1024 * 1024
#: Subscription channel depth; py-libp2p's default 32 drops bursts (pitfall 7).
SUBSCRIPTION_CHANNEL_SIZE = 1024
#: Wait while any peer's gossipsub outbound queue is fuller than this fraction.
_GOSSIP_QUEUE_HIGH_WATER = 0.5
_GOSSIP_BACKPRESSURE_POLL_S = 0.002
#: A peer whose gossip queue stays congested this long is treated as stalled
#: (paused, wedged): publishing goes on without waiting for it.
GOSSIP_STALL_S = 2.0
_OPEN_STREAM_TIMEOUT_S = 10.0
_WRITE_COALESCE_BYTES = 256 * 1024
_CLOSE_TIMEOUT_S = 5.0
#: How long the validator with the larger key waits to be dialled before it dials.
_DIAL_GRACE_S = 1.0

#: Errors that mean "this peer / stream / connection is gone", from any layer.
_NET_ERRORS: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    RateLimitError,
    OSError,
    EOFError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

_NET_OR_TIMEOUT: tuple[type[BaseException], ...] = (*_NET_ERRORS, trio.TooSlowError)
_REQUEST_ERRORS: tuple[type[BaseException], ...] = (*_NET_OR_TIMEOUT, FrameError)

RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]
BatchValidator = Callable[[bytes, bytes], bool]


def gossip_topic(chain_id: str) -> str:
    """The tx-batch topic; named by chain so two networks never mix."""
    return f"/medledger/txbatch/1/{chain_id}"


class PeerUnavailableError(LedgerError):
    """A request could not be answered by that peer (down, slow or misbehaving)."""

    code = "PEER_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class PeerStatistics:
    public_key: bytes
    connected: bool
    queued: int
    frames_sent: int
    frames_received: int
    frames_dropped: int
    send_errors: int
    dials: int
    dial_failures: int


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """A snapshot of the transport's counters (one-to-one with metrics)."""

    peers_connected: int
    peers_rejected: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    #: Frames dropped because a peer's send queue was full (oldest first).
    frames_dropped_queue_full: int
    #: Frames lost because the stream broke while they were being written.
    frames_lost_send_error: int
    #: Frames to ourselves dropped because the receive channel was full.
    frames_dropped_receive_full: int
    frames_invalid: int
    dials: int
    dial_failures: int
    requests_sent: int
    requests_failed: int
    requests_served: int
    gossip_published: int
    gossip_received: int
    gossip_rejected: int
    gossip_dropped: int
    gossip_backpressure_waits: int
    #: Batches published without waiting for a stalled peer (lost for it once its queue is full).
    gossip_stalled_peer_sends: int
    #: Validators in this node's gossipsub mesh for the batch topic.
    gossip_mesh_peers: int
    peers: tuple[PeerStatistics, ...]


@dataclass(slots=True)
class _Counters:
    peers_rejected: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_dropped_queue_full: int = 0
    frames_lost_send_error: int = 0
    frames_dropped_receive_full: int = 0
    frames_invalid: int = 0
    requests_sent: int = 0
    requests_failed: int = 0
    requests_served: int = 0
    gossip_published: int = 0
    gossip_received: int = 0
    gossip_rejected: int = 0
    gossip_dropped: int = 0
    gossip_backpressure_waits: int = 0
    gossip_stalled_peer_sends: int = 0


@dataclass(eq=False)
class _RequestChannel:
    """The reused outbound stream of one request/response protocol to one peer."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    stream: Any = None
    reader: FrameReader | None = None


@dataclass(eq=False)
class _Peer:
    """Everything this node keeps about one other validator. Owned by the Transport."""

    public_key: bytes
    peer_id: Any
    address: HostPort | None
    queue: deque[bytes] = field(default_factory=deque)
    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    send_errors: int = 0
    dials: int = 0
    dial_failures: int = 0
    #: Bumped on every lost connection; a stream opened under an older
    #: generation may sit on a dead connection and is reopened before use.
    generation: int = 0
    _queue_event: trio.Event = field(default_factory=trio.Event)
    _change_event: trio.Event = field(default_factory=trio.Event)
    requests: dict[TProtocol, _RequestChannel] = field(default_factory=dict)

    def notify_queue(self) -> None:
        self._queue_event.set()

    async def wait_work(self, generation: int) -> None:
        """Until there is a frame to send or the connection generation moved on."""
        while not self.queue and self.generation == generation:
            self._queue_event = trio.Event()
            await self._queue_event.wait()

    def notify_change(self) -> None:
        """Connection state or address changed: wake whoever waits on it."""
        self._change_event.set()
        self._change_event = trio.Event()

    async def wait_change(self) -> None:
        await self._change_event.wait()


class _CountingPubsub(Pubsub):
    """Pubsub that counts what it would otherwise drop silently (pitfall 7)."""

    dropped = 0

    def notify_subscriptions(self, publish_message: Any) -> None:
        for topic in publish_message.topicIDs:
            send = self.subscribed_topics_send.get(topic)
            if send is None:
                continue
            try:
                send.send_nowait(publish_message)
            except trio.WouldBlock:
                self.dropped += 1


class _OriginOnlyGossipSub(GossipSub):
    """GossipSub that publishes this node's own messages and forwards none.

    Forwarding (the mesh relaying what it received) exists for networks where
    peers are not all connected to each other; here every validator holds a
    direct connection to every other, so a relayed batch is a duplicate that
    each receiver decrypts, parses and drops. See the module docstring.
    """

    def _get_peers_to_send(
        self,
        topic_ids: Any,
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Any:
        if self.pubsub is None or msg_forwarder != self.pubsub.my_id:
            return ()
        return super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id)


class _Notifee(INotifee):
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connection_change(conn, connected=True)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._transport._on_connection_change(conn, connected=False)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class Transport:
    """This validator's libp2p endpoint. See the module docstring.

    ``validators`` maps every validator's public key (ours included) to where
    it can be dialled (``None``: not known yet, see :meth:`set_peer_address`).
    ``batch_validator(origin_public_key, data)`` is the cheap synchronous
    check a gossiped batch must pass before it is forwarded; reject only what
    is definitely invalid (a rejection is cached by message id for 300 s).

    What arrives is read from two bounded Trio channels: ``messages`` yields
    ``(sender_public_key, frame)`` from direct streams (and our own
    ``send_to`` to ourselves), ``batches`` yields ``(origin_public_key,
    batch)`` from gossip (never our own batches). Not reading them stalls the
    peers' streams: that is the backpressure.
    """

    def __init__(
        self,
        config: P2PConfig,
        key: KeyPair,
        validators: Mapping[bytes, HostPort | None],
        *,
        chain_id: str,
        private_network_key: bytes | None = None,
        batch_validator: BatchValidator | None = None,
    ) -> None:
        if key.public_key not in validators:
            raise ValueError("our own key must be one of the validators")
        self._config = config
        self._key = key
        self._public_key = key.public_key
        self._chain_id = chain_id
        self._topic = gossip_topic(chain_id)
        self._pnet = private_network_key if config.private_network else None
        self._batch_validator = batch_validator
        self._gossip_max = min(config.gossip_batch_bytes, GOSSIP_MAX_RPC_BYTES - 4096)
        self._peers: dict[bytes, _Peer] = {}
        self._by_peer_id: dict[Any, _Peer] = {}
        for pk, addr in sorted(validators.items()):
            if pk == self._public_key:
                continue
            peer = _Peer(pk, peer_id_from_public_key(pk), addr)
            self._peers[pk] = peer
            self._by_peer_id[peer.peer_id] = peer
        self._own_peer_id = peer_id_from_public_key(self._public_key)
        self._allowed_ids = {*self._by_peer_id, self._own_peer_id}
        self._counters = _Counters()
        self._gossip_congested_since: dict[Any, float] = {}  # peer id -> Trio time
        self._recv_send, self.messages = trio.open_memory_channel[tuple[bytes, bytes]](
            config.receive_queue_size
        )
        self._batch_send, self.batches = trio.open_memory_channel[tuple[bytes, bytes]](
            config.receive_queue_size
        )
        self._publish_send, self._publish_recv = trio.open_memory_channel[bytes](
            config.gossip_publish_queue
        )
        self._reject_send, self._reject_recv = trio.open_memory_channel[Any](64)
        self._request_handlers: dict[TProtocol, RequestHandler] = {}
        self._host: Any = None
        self._pubsub: _CountingPubsub | None = None
        self._router: GossipSub | None = None
        self._listen: HostPort | None = None

    # -- public API --------------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def listen_address(self) -> HostPort:
        """The bound address (with the real port when the config said 0)."""
        if self._listen is None:
            raise RuntimeError("transport is not running")
        return self._listen

    def set_peer_address(self, public_key: bytes, address: HostPort) -> None:
        """Where to dial a validator from now on (tests, config overrides)."""
        peer = self._peers[public_key]
        peer.address = address
        peer.notify_change()

    def set_request_handler(
        self, handler: RequestHandler, *, protocol: TProtocol = SYNC_PROTOCOL
    ) -> None:
        """``handler(peer_public_key, request) -> response`` serves ``protocol``.

        ``protocol`` is one of :data:`REQUEST_PROTOCOLS` (default ``/medledger/sync/1``).
        """
        if protocol not in REQUEST_PROTOCOLS:
            raise ValueError(f"{protocol} is not a request/response protocol")
        self._request_handlers[protocol] = handler

    def connected_peers(self) -> list[bytes]:
        return [pk for pk, p in self._peers.items() if self._is_connected(p)]

    def send_to(self, public_key: bytes, data: bytes) -> bool:
        """Queue one frame for a validator; never blocks.

        Returns False if it displaced the oldest queued frame (counted) or, for
        ourselves, could not be delivered. Raises ``KeyError`` for a key that
        is not a validator and :class:`TooLargeError` for an oversized frame.
        """
        if len(data) > self._config.max_message_bytes:
            raise TooLargeError(
                f"frame of {len(data)} bytes exceeds p2p.max_message_bytes "
                f"({self._config.max_message_bytes})"
            )
        if public_key == self._public_key:
            try:
                self._recv_send.send_nowait((public_key, data))
            except trio.WouldBlock:
                self._counters.frames_dropped_receive_full += 1
                return False
            return True
        peer = self._peers[public_key]
        ok = True
        if len(peer.queue) >= self._config.send_queue_size:
            peer.queue.popleft()
            peer.frames_dropped += 1
            self._counters.frames_dropped_queue_full += 1
            ok = False
        peer.queue.append(data)
        peer.notify_queue()
        return ok

    def broadcast(self, data: bytes) -> int:
        """Queue one frame for every other validator; returns how many queued without a drop."""
        return sum(self.send_to(pk, data) for pk in self._peers)

    async def publish_batch(self, data: bytes) -> None:
        """Gossip one tx batch to every validator; waits while the gossip queue is full."""
        if len(data) > self._gossip_max:
            raise TooLargeError(f"batch of {len(data)} bytes exceeds limit of {self._gossip_max}")
        await self._publish_send.send(data)

    async def request(
        self,
        public_key: bytes,
        data: bytes,
        *,
        timeout: float = 10.0,
        protocol: TProtocol = SYNC_PROTOCOL,
    ) -> bytes:
        """One request/response with a validator on its reused stream of ``protocol``.

        Raises :class:`PeerUnavailableError` when the peer is down, too slow,
        or breaks the framing; the stream is then reset and reopened next time.
        """
        peer = self._peers.get(public_key)
        if peer is None:
            raise PeerUnavailableError(f"{public_key.hex()[:16]}... is not a validator")
        if protocol not in REQUEST_PROTOCOLS:
            raise ValueError(f"{protocol} is not a request/response protocol")
        channel = peer.requests.setdefault(protocol, _RequestChannel())
        self._counters.requests_sent += 1
        async with channel.lock:
            try:
                with trio.fail_after(timeout):
                    if channel.stream is None:
                        if not await self._wait_connected(peer, timeout):
                            raise trio.TooSlowError
                        channel.stream = await self._host.new_stream(peer.peer_id, [protocol])
                        channel.reader = FrameReader(
                            channel.stream, self._config.max_message_bytes
                        )
                    assert channel.reader is not None
                    await channel.stream.write(encode_frame(data))
                    response = await channel.reader.read_frame()
                    if response is None:
                        raise EOFError("stream closed before the response")
                    return response
            except _REQUEST_ERRORS as exc:
                self._counters.requests_failed += 1
                await self._drop_request_stream(channel)
                raise PeerUnavailableError(
                    f"request to {public_key.hex()[:16]}... failed: {exc.__class__.__name__}"
                ) from None

    def statistics(self) -> TransportStatistics:
        c = self._counters
        peers = tuple(
            PeerStatistics(
                public_key=p.public_key,
                connected=self._is_connected(p),
                queued=len(p.queue),
                frames_sent=p.frames_sent,
                frames_received=p.frames_received,
                frames_dropped=p.frames_dropped,
                send_errors=p.send_errors,
                dials=p.dials,
                dial_failures=p.dial_failures,
            )
            for p in self._peers.values()
        )
        return TransportStatistics(
            peers_connected=sum(p.connected for p in peers),
            peers_rejected=c.peers_rejected,
            frames_sent=c.frames_sent,
            frames_received=c.frames_received,
            bytes_sent=c.bytes_sent,
            bytes_received=c.bytes_received,
            frames_dropped_queue_full=c.frames_dropped_queue_full,
            frames_lost_send_error=c.frames_lost_send_error,
            frames_dropped_receive_full=c.frames_dropped_receive_full,
            frames_invalid=c.frames_invalid,
            dials=sum(p.dials for p in peers),
            dial_failures=sum(p.dial_failures for p in peers),
            requests_sent=c.requests_sent,
            requests_failed=c.requests_failed,
            requests_served=c.requests_served,
            gossip_published=c.gossip_published,
            gossip_received=c.gossip_received,
            gossip_rejected=c.gossip_rejected,
            gossip_dropped=c.gossip_dropped + (self._pubsub.dropped if self._pubsub else 0),
            gossip_backpressure_waits=c.gossip_backpressure_waits,
            gossip_stalled_peer_sends=c.gossip_stalled_peer_sends,
            gossip_mesh_peers=len(self._router.mesh.get(self._topic, ())) if self._router else 0,
            peers=peers,
        )

    # -- the service -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, connect to every validator and serve until cancelled."""
        host = build_host(
            self._key.seed,
            self._config.listen,
            self._pnet,
            dial_timeout_s=self._config.dial_timeout_s,
        )
        self._host = host
        host.get_network().register_notifee(_Notifee(self))
        host.set_stream_handler(CONSENSUS_PROTOCOL, self._on_direct_stream)
        for protocol in REQUEST_PROTOCOLS:
            host.set_stream_handler(protocol, partial(self._on_request_stream, protocol))
        n_peers = max(1, len(self._peers))
        router = _OriginOnlyGossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=n_peers,
            degree_low=n_peers,
            degree_high=n_peers + 2,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=1,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
            do_px=False,
        )
        pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_CHANNEL_SIZE
        pubsub = _CountingPubsub(
            host,
            router,
            strict_signing=True,
            allowed_topics={self._topic},
            max_inbound_rpc_size=GOSSIP_MAX_RPC_BYTES,
        )
        # Pitfall 9: a counter seeded from whole seconds repeats after a fast restart.
        pubsub.counter = time.time_ns()
        self._pubsub = pubsub
        self._router = router
        listen = multiaddr.Multiaddr(self._config.listen.multiaddr())
        try:
            async with host.run([listen]):
                try:
                    async with background_trio_service(pubsub), background_trio_service(router):
                        await pubsub.wait_until_ready()
                        pubsub.set_topic_validator(self._topic, self._validate_batch, False)
                        subscription = await pubsub.subscribe(self._topic)
                        self._listen = self._bound_address(host)
                        cache_advertised_addrs(host)
                        async with trio.open_nursery() as nursery:
                            for peer in self._peers.values():
                                nursery.start_soon(self._keep_connected, peer)
                                nursery.start_soon(self._sender, peer)
                            nursery.start_soon(self._gossip_reader, subscription)
                            nursery.start_soon(self._gossip_publisher, pubsub)
                            nursery.start_soon(self._rejecter)
                            task_status.started(self._listen)
                finally:
                    # Close every connection explicitly, so peers see us leave now
                    # rather than when their own timeouts fire.
                    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
                        await host.close()
        finally:
            self._listen = None

    def _bound_address(self, host: Any) -> HostPort:
        for addr in host.get_transport_addrs():
            port = addr.value_for_protocol("tcp")
            if port is not None:
                return HostPort(self._config.listen.host, int(port))
        return self._config.listen

    # -- connections -------------------------------------------------------------------

    def _is_connected(self, peer: _Peer) -> bool:
        if self._host is None:
            return False
        return bool(self._host.get_network().get_connections(peer.peer_id))

    def _on_connection_change(self, conn: Any, *, connected: bool) -> None:
        peer_id = getattr(conn.muxed_conn, "peer_id", None)
        peer = self._by_peer_id.get(peer_id)
        if peer is not None:
            if not connected:
                peer.generation += 1
                peer.notify_queue()  # wake the sender so it drops its stream
            peer.notify_change()
            return
        if connected and peer_id not in self._allowed_ids:
            self._counters.peers_rejected += 1
            log.warning("refused connection from non-validator peer %s", peer_id)
            try:
                self._reject_send.send_nowait(peer_id)
            except trio.WouldBlock:  # the rejecter is busy; the stream handlers refuse it too
                log.warning("rejecter busy; non-validator %s disconnected later", peer_id)

    async def _rejecter(self) -> None:
        """Close connections of peers outside the allow-list (outside the notifee's task)."""
        async for peer_id in self._reject_recv:
            if self._pubsub is not None:  # drop anything it managed to gossip, and its streams
                self._pubsub.add_to_blacklist(peer_id)
            try:
                await self._host.disconnect(peer_id)
            except _NET_ERRORS as exc:
                log.debug("closing non-validator %s failed: %r", peer_id, exc)

    async def _wait_connected(self, peer: _Peer, timeout: float) -> bool:
        """Wait up to ``timeout`` for a connection to ``peer``; True if there is one."""
        with trio.move_on_after(timeout):
            while not self._is_connected(peer):
                await peer.wait_change()
        return self._is_connected(peer)

    async def _keep_connected(self, peer: _Peer) -> None:
        """Keep one connection to ``peer``: dial, then re-dial with backoff when lost.

        Of two validators, the one with the smaller public key dials at once;
        the other dials only if no connection appeared within a grace period.
        Without that rule both dial at the same moment and every pair holds
        two connections (two Noise sessions, two sets of streams).
        """
        backoff = self._config.dial_backoff_initial_s
        while True:
            if self._is_connected(peer):
                backoff = self._config.dial_backoff_initial_s
                await peer.wait_change()
                continue
            if peer.address is None:
                await peer.wait_change()
                continue
            if self._public_key > peer.public_key and await self._wait_connected(
                peer, _DIAL_GRACE_S
            ):
                continue  # the peer with the smaller key dialled us, as it should
            try:
                with trio.fail_after(self._config.dial_timeout_s):
                    await self._dial(peer.peer_id, peer.address)
                peer.dials += 1
                peer.notify_change()
                continue
            except _NET_OR_TIMEOUT as exc:
                peer.dial_failures += 1
                log.debug("dial %s failed: %r", peer.public_key.hex()[:16], exc)
            # Retry after the backoff, or sooner if the peer dials us meanwhile.
            with trio.move_on_after(backoff):
                await peer.wait_change()
            backoff = min(backoff * 2, self._config.dial_backoff_max_s)

    async def _dial(self, peer_id: Any, address: HostPort) -> None:
        """Dial a validator at the address the operator configured, and only there.

        Not ``host.connect``: py-libp2p's ``dial_peer`` dials an address from its
        peerstore, and every gossipsub RPC carries the sender's signed peer
        record, whose addresses *replace* the ones we stored for that peer. A
        node listening on ``0.0.0.0:26656`` advertises ``/ip4/0.0.0.0/tcp/26656``,
        which in another container is that container's own listener: after a
        validator restarted, its peers re-dialled themselves and failed the Noise
        handshake, seeing their own key ("handshake failed when upgrading to
        secure connection"). ``dial_peer`` also refuses every dial for 60 s after
        one that failed (its negative peer cache), longer than our own backoff.
        Dialling the configured address (genesis or ``p2p.peers``) avoids both;
        what a peer says about its own address is never used.
        """
        network: Any = self._host.get_network()
        await network.dial_addr(multiaddr.Multiaddr(address.multiaddr()), peer_id)

    # -- direct streams ----------------------------------------------------------------

    async def _sender(self, peer: _Peer) -> None:
        """Drain ``peer``'s queue into one persistent stream; reopen it when it breaks.

        The stream is opened as soon as a connection exists, not when the first
        frame is queued, so a PBFT message after a (re)connect does not also
        pay for stream negotiation.
        """
        backoff = self._config.dial_backoff_initial_s
        while True:
            # Connections are _keep_connected's job; new_stream would dial on its own.
            while not self._is_connected(peer):
                await peer.wait_change()
            try:
                with trio.fail_after(_OPEN_STREAM_TIMEOUT_S):
                    stream = await self._host.new_stream(peer.peer_id, [CONSENSUS_PROTOCOL])
            except _NET_OR_TIMEOUT as exc:
                peer.send_errors += 1
                log.debug("stream to %s: %r", peer.public_key.hex()[:16], exc)
                with trio.move_on_after(backoff):
                    await peer.wait_change()
                backoff = min(backoff * 2, self._config.dial_backoff_max_s)
                continue
            backoff = self._config.dial_backoff_initial_s
            generation = peer.generation
            try:
                while True:
                    await peer.wait_work(generation)
                    if peer.generation != generation:
                        break  # a connection to this peer was lost: reopen first
                    chunk, count = self._take_frames(peer)
                    try:
                        await stream.write(chunk)
                    except _NET_ERRORS:
                        peer.frames_dropped += count
                        self._counters.frames_lost_send_error += count
                        raise
                    peer.frames_sent += count
                    self._counters.frames_sent += count
                    self._counters.bytes_sent += len(chunk)
            except _NET_ERRORS as exc:
                peer.send_errors += 1
                log.debug("stream to %s broke: %r", peer.public_key.hex()[:16], exc)
            await _reset_quietly(stream)

    def _take_frames(self, peer: _Peer) -> tuple[bytes, int]:
        """Pop queued frames, coalesced into one write of at most ~256 KiB."""
        parts: list[bytes] = []
        size = 0
        while peer.queue and (not parts or size < _WRITE_COALESCE_BYTES):
            frame = encode_frame(peer.queue.popleft())
            parts.append(frame)
            size += len(frame)
        return b"".join(parts), len(parts)

    def _authorize(self, stream: Any) -> _Peer | None:
        peer_id = getattr(stream.muxed_conn, "peer_id", None)
        peer = self._by_peer_id.get(peer_id)
        if peer is None:
            self._counters.peers_rejected += 1
            log.warning("refused stream from non-validator peer %s", peer_id)
        return peer

    async def _on_direct_stream(self, stream: Any) -> None:
        peer = self._authorize(stream)
        if peer is None:
            await _reset_quietly(stream)
            return
        reader = FrameReader(stream, self._config.max_message_bytes)
        try:
            while (frame := await reader.read_frame()) is not None:
                peer.frames_received += 1
                self._counters.frames_received += 1
                self._counters.bytes_received += len(frame)
                await self._recv_send.send((peer.public_key, frame))
        except FrameError as exc:
            self._counters.frames_invalid += 1
            log.warning("bad frame from %s: %s", peer.public_key.hex()[:16], exc)
            await _reset_quietly(stream)
        except _NET_ERRORS as exc:
            log.debug("stream from %s ended: %r", peer.public_key.hex()[:16], exc)

    async def _on_request_stream(self, protocol: TProtocol, stream: Any) -> None:
        peer = self._authorize(stream)
        handler = self._request_handlers.get(protocol)
        if peer is None or handler is None:
            await _reset_quietly(stream)
            return
        reader = FrameReader(stream, self._config.max_message_bytes)
        try:
            while (request := await reader.read_frame()) is not None:
                response = await handler(peer.public_key, request)
                await stream.write(encode_frame(response))
                self._counters.requests_served += 1
        except FrameError as exc:
            self._counters.frames_invalid += 1
            log.warning("bad request frame from %s: %s", peer.public_key.hex()[:16], exc)
            await _reset_quietly(stream)
        except _NET_ERRORS as exc:
            log.debug("%s stream from %s ended: %r", protocol, peer.public_key.hex()[:16], exc)

    async def _drop_request_stream(self, channel: _RequestChannel) -> None:
        stream, channel.stream, channel.reader = channel.stream, None, None
        if stream is not None:
            await _reset_quietly(stream)

    # -- gossip ------------------------------------------------------------------------

    def _validate_batch(self, forwarder: Any, msg: Any) -> bool:
        """Synchronous topic validator: membership and size, then the owner's hook."""
        try:
            origin = ID(msg.from_id)
        except (ValueError, TypeError):
            origin = None
        ok = (
            forwarder in self._allowed_ids
            and origin in self._allowed_ids
            and len(msg.data) <= self._gossip_max
        )
        if ok and self._batch_validator is not None and origin != self._own_peer_id:
            peer = self._by_peer_id[origin]
            ok = self._batch_validator(peer.public_key, bytes(msg.data))
        if not ok:
            self._counters.gossip_rejected += 1
        return ok

    async def _gossip_reader(self, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            origin = self._by_peer_id.get(ID(msg.from_id))
            if origin is None:  # our own batch, echoed by the router
                continue
            self._counters.gossip_received += 1
            await self._batch_send.send((origin.public_key, bytes(msg.data)))

    async def _gossip_publisher(self, pubsub: _CountingPubsub) -> None:
        async for data in self._publish_recv:
            await self._wait_gossip_room(pubsub)
            await pubsub.publish(self._topic, data)
            self._counters.gossip_published += 1

    async def _wait_gossip_room(self, pubsub: _CountingPubsub) -> None:
        """Wait until no live peer's gossipsub outbound queue is over half full.

        py-libp2p drops an RPC silently when that queue (32 entries) is full
        (pitfall 6) and offers no event for "room again", so this polls
        briefly; it only polls while a queue is actually congested.

        A peer congested for :data:`GOSSIP_STALL_S` without a break is not
        waited for any more (until its queue drains): a paused or wedged
        validator must not stop every other validator's txs from spreading,
        which is the f = 1 fault the network is built to survive. What it
        misses reaches it in the blocks it commits (and by re-announcement);
        each batch published past it is counted.
        """
        waited = False
        congested_since = self._gossip_congested_since
        while True:
            now = trio.current_time()
            live_congested = stalled = 0
            for peer, queue in list(pubsub.peer_queues.items()):
                cap = getattr(getattr(queue, "_queue", None), "max_size", 32) or 32
                if len(queue) / cap <= _GOSSIP_QUEUE_HIGH_WATER:
                    congested_since.pop(peer, None)
                    continue
                since = congested_since.setdefault(peer, now)
                if now - since >= GOSSIP_STALL_S:
                    stalled += 1
                else:
                    live_congested += 1
            for gone in [p for p in congested_since if p not in pubsub.peer_queues]:
                del congested_since[gone]
            if not live_congested:
                if stalled:
                    self._counters.gossip_stalled_peer_sends += 1
                return
            if not waited:
                self._counters.gossip_backpressure_waits += 1
                waited = True
            await trio.sleep(_GOSSIP_BACKPRESSURE_POLL_S)


async def _reset_quietly(stream: Any) -> None:
    """Reset a stream we are giving up on; it may already be gone."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except _NET_ERRORS as exc:
            log.debug("reset failed: %r", exc)


def validator_addresses(config: Config, genesis: GenesisDoc) -> dict[bytes, HostPort | None]:
    """Where to dial each validator: genesis addresses, with ``p2p.peers`` overrides."""
    addresses: dict[bytes, HostPort | None] = {
        v.public_key: v.p2p_address for v in genesis.validators
    }
    for override in config.p2p.peers:
        if override.public_key not in addresses:
            raise ConfigError(
                f"{config.source}: p2p.peers: {override.public_key.hex()[:16]}... is not a "
                f"validator in {genesis.source}"
            )
        addresses[override.public_key] = override.address
    return addresses


def transport_from_config(
    config: Config,
    genesis: GenesisDoc,
    key: KeyPair,
    *,
    batch_validator: BatchValidator | None = None,
) -> Transport:
    """The node's transport, wired from its config and the network's genesis."""
    if genesis.validator(key.public_key) is None:
        raise ConfigError(
            f"{config.node.key_file}: key {key.public_key.hex()[:16]}... is not a validator "
            f"in {genesis.source}"
        )
    if config.p2p.private_network and genesis.private_network_key is None:
        raise ConfigError(
            f"{config.source}: p2p.private_network: is true but {genesis.source} has no "
            "private_network_key"
        )
    return Transport(
        config.p2p,
        key,
        validator_addresses(config, genesis),
        chain_id=genesis.chain_id,
        private_network_key=genesis.private_network_key,
        batch_validator=batch_validator,
    )
