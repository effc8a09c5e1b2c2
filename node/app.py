"""One hospital's node: every subsystem built from the config and run together.

Ownership (one owner per piece of state):

* the consensus service task owns the PBFT replica and drives the
  :class:`~node.ledger_app.LedgerApplication`, which alone writes the store;
* the mempool belongs to the Trio thread (API handlers and the gossip pump add
  to it; :meth:`LedgerApplication.after_commit` updates it);
* the transport owns libp2p; two pump tasks move what it receives into the
  consensus input channel and the mempool.

Shutdown (SIGTERM / SIGINT): the API stops accepting, the nursery is
cancelled; a block commit that is running in its worker thread is not
abandoned (Trio waits for it), so LevelDB closes after a whole height. The WAL
needs no flush: every vote was synced before it was sent.

A full disk (or any failed local write) stops the node the same way: the
store or the WAL raises :class:`~ledger.errors.StorageIOError` in the task that
wrote (a commit in the consensus service, a WAL sync before a send, a late
blob), the nursery is cancelled, LevelDB and the WAL are closed, and
:func:`run` turns the error into one line naming the data dir; ``medledger
start`` exits 74 (EX_IOERR). Nothing is half-written: the failed LevelDB batch
is all-or-nothing, and a vote whose WAL sync failed was never sent.
"""

from __future__ import annotations

import errno
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import trio

from consensus.core import ConsensusConfig as CoreConfig
from consensus.core import Evidence, Replica
from consensus.service import ConsensusService
from consensus.validators import ValidatorSet
from consensus.wal import FileWAL
from ledger import codec
from ledger.apply import ApplyContext
from ledger.block import Block
from ledger.errors import LedgerError, NotFoundError, StorageIOError
from ledger.genesis import (
    Genesis,
    genesis_hash,
)
from ledger.keys import KeyPair
from ledger.merkle import prove
from ledger.results import decode_results
from ledger.state import KIND_CLINICIAN, KIND_ORGANISATION, KIND_PATIENT, StateView
from ledger.validate import SigCache
from node.api.app import ApiSettings, create_app
from node.api.facade import AccountView, BlockView, NodeStatus, TxStatus
from node.api.server import ServerSettings, serve_api
from node.clinical.wiring import ClinicalParts, build_clinical
from node.config import Config, ConfigError
from node.evidence import EvidenceLog, EvidenceRecorder, page_body
from node.gc_tuning import tune_gc
from node.genesis_file import GenesisDoc, check_consensus_matches, load_genesis
from node.inbox import FairInbox
from node.keyfile import load_key_file
from node.ledger_app import CommitInfo, LedgerApplication, open_chain, proposal_spacing_for
from node.logs import configure_logging
from node.mempool import LedgerTxChecker, Mempool, MempoolSettings, gossip_interval_for
from node.metrics import CounterLike, NodeMetrics
from node.p2p import Transport, transport_from_config
from node.txpush import TxPushService
from node.watchdog import run_stall_watchdog
from storage.store import Store, open_leveldb, open_memory

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    """The proposer's block time and signed-read freshness: the only wall clock used."""
    return time.time_ns() // 1_000_000


class _ConsensusTransport:
    """The consensus service's async ``Transport`` over the p2p layer's queues.

    The p2p layer enqueues per peer and never blocks; a full queue drops the
    message and counts it there (PBFT's retransmission and view change cover
    a lost message), so these coroutines return at once.
    """

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def send_to(self, peer: bytes, data: bytes) -> None:
        self._t.send_to(peer, data)

    async def broadcast(self, data: bytes) -> None:
        self._t.broadcast(data)


@dataclass(frozen=True, slots=True)
class NodeParts:
    """Everything a running node is made of (for tests and the facade)."""

    config: Config
    key: KeyPair
    doc: GenesisDoc
    genesis: Genesis
    store: Store
    metrics: NodeMetrics
    mempool: Mempool
    app: LedgerApplication
    transport: Transport
    service: ConsensusService
    wal: FileWAL


#: Consensus messages queued per sending validator before its oldest is dropped
#: (node/inbox.py); the service's own input channel stays short, so a message
#: picked from a fair turn is not queued again behind a flood.
_INBOX_PER_SENDER = 512
#: A tx pending this long is gossiped again by every node that holds it: well
#: above submit-to-commit latency (~0.5 s at 1,000 tx/s), so only txs that may
#: have missed a validator go again. At most REANNOUNCE_MAX txs per round.
REANNOUNCE_AFTER_S = 3.0
REANNOUNCE_EVERY_S = 1.0
REANNOUNCE_MAX = 512
_SERVICE_INPUT = 64
#: Worker threads serving the API's large store reads at once (NodeFacadeImpl).
API_READ_THREADS = 4


def core_config(config: Config, genesis: Genesis) -> CoreConfig:
    """Consensus knobs: shared ones from genesis, local timing from the config."""
    c = config.consensus
    return CoreConfig(
        window=genesis.params.window,
        checkpoint_interval=genesis.params.checkpoint_interval,
        progress_timeout_ms=int(c.timeout_base_s * 1000),
        view_change_timeout_ms=int(c.timeout_base_s * 1000),
        max_timeout_ms=int(c.timeout_cap_s * 1000),
        # The core sizes state-transfer answers to what the transport carries.
        max_message_size=config.p2p.max_message_bytes,
    )


class Node:
    """Build with :meth:`open` (synchronous, may raise typed errors), then ``run``."""

    def __init__(self, parts: NodeParts) -> None:
        self.parts = parts
        self.clinical: ClinicalParts = build_clinical(parts, clock_ms=wall_clock_ms)
        self.evidence = _evidence_recorder(parts)
        # Room for two of the largest frames per sender: one sender's backlog
        # never grows past that, whatever it sends.
        self.inbox = FairInbox(_INBOX_PER_SENDER, 2 * parts.config.p2p.max_message_bytes)
        self._ready_height = 0
        self._last_commit_at: float | None = None

    # -- construction ------------------------------------------------------------

    @classmethod
    def open(
        cls, config: Config, *, doc: GenesisDoc | None = None, key: KeyPair | None = None
    ) -> Node:
        """Load what ``config`` names (or use the given genesis/key) and assemble the node."""
        key = key if key is not None else load_key_file(config.node.key_file)
        doc = doc if doc is not None else load_genesis(config.node.genesis_file)
        check_consensus_matches(config, doc)
        genesis = doc.to_ledger_genesis()
        if key.public_key not in genesis.validators:
            raise LedgerError("this node's key is not a validator in the genesis file")
        if config.storage.backend == "memory":
            store = open_memory()
        else:
            config.node.data_dir.mkdir(parents=True, exist_ok=True)
            store = open_leveldb(config.node.data_dir / "ledger", sync=config.storage.sync)
        try:
            # A disk that lies must stop the node here, with the first bad key named
            # (CorruptionError), never be served or built upon: one pass over the store.
            store.verify()
            if config.storage.backend != "memory":
                # The pass read every table through LevelDB's memory maps, and those
                # pages stay resident while the tables are open (up to 127 MB of a
                # 1,000,000-tx store): reopen so the node starts with none of them.
                store.close()
                store = open_leveldb(config.node.data_dir / "ledger", sync=config.storage.sync)
            return cls._assemble(config, key, doc, genesis, store)
        except BaseException:
            store.close()
            raise

    @classmethod
    def _assemble(
        cls, config: Config, key: KeyPair, doc: GenesisDoc, genesis: Genesis, store: Store
    ) -> Node:
        open_chain(store, genesis)
        metrics = NodeMetrics()
        ctx = ApplyContext.from_genesis(genesis, SigCache())
        height = store.latest_height() or 0
        last_time = _block_time(store, height, genesis)
        m = config.mempool
        mempool = Mempool(
            LedgerTxChecker(store, ctx, time_ms=last_time),
            MempoolSettings(
                max_txs=m.max_txs,
                max_bytes=m.max_bytes,
                recheck_budget_s=m.recheck_budget_s,
                # A hospital signs all its registrations with one key: its node must
                # hold a deep queue of that sender's nonces (still bounded by max_txs).
                max_nonces_ahead=min(m.max_txs, 10_000),
                gossip_batch_bytes=config.p2p.gossip_batch_bytes,
                gossip_batch_interval_s=gossip_interval_for(
                    config.p2p.gossip_batch_interval_s, len(genesis.validators)
                ),
            ),
            metrics=metrics,
            height=height,
        )
        node_ref: list[Node] = []

        def on_commit(info: CommitInfo) -> None:
            node_ref[0]._committed(info)

        batch_wait_s, idle_spacing_s = proposal_spacing_for(
            config.consensus.block_interval_s, len(genesis.validators)
        )
        app = LedgerApplication(
            store=store,
            genesis=genesis,
            key=key,
            mempool=mempool,
            ctx=ctx,
            clock_ms=wall_clock_ms,
            on_commit=on_commit,
            batch_wait_s=batch_wait_s,
            idle_spacing_s=idle_spacing_s,
        )
        validators = ValidatorSet(genesis.chain_id, genesis.validators)
        wal = FileWAL(config.node.data_dir / "consensus.wal")
        replica = Replica(
            core_config(config, genesis),
            key,
            validators,
            app,
            genesis_digest=genesis_hash(genesis),
            committed_height=height,
            committed_digest=store.get_block_hash(height),
            wal_records=wal.records(),
        )
        transport = transport_from_config(config, doc, key)
        service = ConsensusService(
            replica,
            app,
            wal,
            _ConsensusTransport(transport),
            input_capacity=_SERVICE_INPUT,
            on_commit=lambda _commit: _drain(app),
            on_evidence=lambda e: node_ref[0]._evidence(e),
        )
        node = cls(
            NodeParts(
                config, key, doc, genesis, store, metrics, mempool, app, transport, service, wal
            )
        )
        node_ref.append(node)
        return node

    # -- running -----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled or signalled; ``task_status`` gets the API's bound URLs."""
        p = self.parts
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(p.transport.run)
                await nursery.start(p.service.run)
                await nursery.start(self.clinical.key_release.run)
                await nursery.start(self.clinical.blob_fetch.run)
                await nursery.start(self.evidence.run)
                push = TxPushService(
                    p.mempool, p.transport, p.metrics,
                    validators=[v for v in p.genesis.validators if v != p.key.public_key],
                    on_admitted=self._on_pushed,
                )
                await nursery.start(push.run)
                nursery.start_soon(self._pump_consensus)
                nursery.start_soon(self._feed_consensus)
                nursery.start_soon(self._pump_batches)
                await nursery.start(p.mempool.run_gossip, p.transport.publish_batch)
                nursery.start_soon(self._refresh_gauges)
                nursery.start_soon(self._poke_proposer)
                nursery.start_soon(self._reannounce)
                await nursery.start(partial(run_stall_watchdog, metrics=p.metrics))
                api = create_app(
                    NodeFacadeImpl(self), ApiSettings.from_config(p.config), metrics=p.metrics
                )
                # [api] limits and slow-client timeouts (body, keep-alive/headers, read).
                urls = await nursery.start(serve_api, api, ServerSettings.from_config(p.config))
                log.info(
                    "node started: validator %s, height %d, api %s",
                    p.key.public_key.hex()[:16],
                    p.store.latest_height() or 0,
                    ",".join(urls),
                )
                task_status.started(urls)
                await self._wait_for_signal()
                log.info("shutting down")
                nursery.cancel_scope.cancel()
        finally:
            height = p.store.latest_height()
            try:
                p.wal.close()
            finally:
                p.store.close()
            log.info("stopped cleanly at height %s", height)

    async def _wait_for_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                return

    async def _pump_consensus(self) -> None:
        """Transport -> per-sender inbox; never blocks, so no peer's stream stalls another's."""
        p = self.parts
        async for peer, data in p.transport.messages:
            if not self.inbox.put_nowait(peer, data):
                p.metrics.messages_dropped.labels("consensus_input_full").inc()

    async def _feed_consensus(self) -> None:
        """Inbox -> consensus service, one sender at a time (see node/inbox.py).

        Fills what room the service has in one scheduler turn: it drains its
        queue in batches, and one message per turn here would starve it the
        same way when the API keeps many tasks runnable.
        """
        service = self.parts.service
        while True:
            _peer, data = await self.inbox.get()
            await service.deliver(data)
            while service.input_room() > 0:
                try:
                    _peer, data = self.inbox.get_nowait()
                except trio.WouldBlock:
                    break
                service.deliver_nowait(data)

    def _on_pushed(self, data: bytes) -> None:
        """A peer pushed us a tx too large for gossip (node.txpush): as for a batch."""
        self.clinical.blobs.observe_batch(data)
        self.parts.service.notify_pending()

    async def _pump_batches(self) -> None:
        p = self.parts
        async for _origin, data in p.transport.batches:
            try:
                outcome = await p.mempool.add_batch(data)
            except LedgerError as exc:
                p.metrics.messages_dropped.labels(exc.code.lower()).inc()
                continue
            self.clinical.blobs.observe_batch(data)  # blobs of txs that commit(ted) without them
            if outcome.accepted:
                p.service.notify_pending()

    async def _poke_proposer(self) -> None:
        """Re-poll the core while txs wait, so a proposal held back for batching
        (see ``LedgerApplication.proposal_deferred``) leaves within the interval."""
        p = self.parts
        interval = max(0.005, p.config.consensus.block_interval_s / 2)
        while True:
            await trio.sleep(interval)
            if p.app.has_pending():
                p.service.notify_pending()

    async def _reannounce(self) -> None:
        """Gossip long-pending txs again: gossip is origin-only (see ``node.p2p``)."""
        mempool = self.parts.mempool
        while True:
            await trio.sleep(REANNOUNCE_EVERY_S)
            mempool.reannounce_stale(REANNOUNCE_AFTER_S, REANNOUNCE_MAX)

    async def _refresh_gauges(self) -> None:
        """Carry the transport's and replica's own counters into Prometheus once a second.

        They count in plain ints on their hot paths (no metrics dependency in
        the sans-IO core); here each counter advances by the delta since the
        last look, so every metric stays a true monotonic counter.
        """
        p = self.parts
        sync = _CounterSync()
        m = p.metrics
        while True:
            replica = p.service.replica.statistics()
            transport = p.transport.statistics()
            m.view.set(replica.view)
            m.peers.set(transport.peers_connected)
            sync.advance(m.view_changes, "view_changes", replica.view_changes)
            sync.advance(m.peers_refused, "peers_refused", transport.peers_rejected)
            sync.advance(
                m.invalid_signatures.labels("consensus"), "sig", replica.invalid_signatures
            )
            for reason, value in (
                ("send_queue_full", transport.frames_dropped_queue_full),
                ("send_error", transport.frames_lost_send_error),
                ("receive_full", transport.frames_dropped_receive_full),
                ("invalid_frame", transport.frames_invalid),
                ("gossip_rejected", transport.gossip_rejected),
                ("gossip_dropped", transport.gossip_dropped),
                ("gossip_peer_stalled", transport.gossip_stalled_peer_sends),
                ("consensus_out_of_window", replica.dropped_out_of_window),
                ("consensus_over_cap", replica.dropped_over_cap),
                ("consensus_non_validator", replica.non_validator),
                ("consensus_malformed", replica.malformed),
                ("consensus_invalid", replica.invalid_messages),
            ):
                sync.advance(m.messages_dropped.labels(reason), reason, value)
            for kind, value in replica.messages_in:
                sync.advance(m.messages_in.labels("stream", kind), "in" + kind, value)
            for kind, value in replica.messages_out:
                sync.advance(m.messages_out.labels("stream", kind), "out" + kind, value)
            sync.advance(m.messages_in.labels("gossip", "tx_batch"), "gin",
                         transport.gossip_received)
            sync.advance(m.messages_out.labels("gossip", "tx_batch"), "gout",
                         transport.gossip_published)
            sync.advance(m.bytes_in.labels("stream"), "bin", transport.bytes_received)
            sync.advance(m.bytes_out.labels("stream"), "bout", transport.bytes_sent)
            m.state_transfer_target_height.set(replica.state_target)
            sync.advance(m.state_transfer_blocks, "st", replica.state_blocks_received)
            await trio.sleep(1.0)

    # -- events ------------------------------------------------------------------

    def _committed(self, info: CommitInfo) -> None:
        m = self.parts.metrics
        now = time.monotonic()
        if self._last_commit_at is not None:
            m.block_interval.observe(now - self._last_commit_at)
        self._last_commit_at = now
        log.info(
            "committed height=%d txs=%d hash=%s",
            info.height, len(info.block.txs), info.block_hash.hex()[:16],
        )
        m.height.set(info.height)
        m.committed_blocks.inc()
        m.committed_txs.inc(len(info.block.txs))
        m.block_txs.observe(len(info.block.txs))
        self.clinical.on_commit(info)

    def _evidence(self, evidence: Evidence) -> None:
        log.warning("equivocation evidence from validator %s", evidence.validator.hex()[:16])
        self.parts.metrics.equivocations.labels(evidence.kind).inc()
        self.evidence.record_nowait(evidence)  # stored by its own task (node/evidence.py)

    # -- views for the API -------------------------------------------------------

    def quorum_connected(self) -> bool:
        p = self.parts
        n = len(p.genesis.validators)
        f = (n - 1) // 3
        return len(p.transport.connected_peers()) + 1 >= 2 * f + 1


def _quiet_libp2p(modules: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """py-libp2p logs every failed dial at WARNING; a validator that is down is
    already visible in ``medledger_p2p_peers``. ``[logging] modules`` overrides."""
    quiet = [("libp2p", "error"), ("multiaddr", "error")]
    given = {name for name, _ in modules}
    return [m for m in quiet if m[0] not in given] + list(modules)


def _drop_root_logger_noise(record: logging.LogRecord) -> bool:
    """py-libp2p also logs through the root logger itself (``logging.warning``);
    our modules never do, so below ERROR those records are its dial chatter."""
    return record.name != "root" or record.levelno >= logging.ERROR


class _CounterSync:
    """Turns cumulative snapshots into counter increments."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def advance(self, counter: CounterLike, name: str, value: int) -> None:
        delta = value - self._last.get(name, 0)
        if delta > 0:
            counter.inc(delta)
            self._last[name] = value


def _evidence_recorder(parts: NodeParts) -> EvidenceRecorder:
    """Equivocation evidence kept in the store's node-local namespace (reads it back once)."""
    store = parts.store
    return EvidenceRecorder(
        EvidenceLog(store),
        clock_ms=wall_clock_ms,
        height=lambda: store.latest_height() or 0,
    )


def _drain(app: LedgerApplication) -> None:
    app.after_commit()


def _block_time(store: Store, height: int, genesis: Genesis) -> int:
    if height == 0:
        return genesis.genesis_time_ms
    raw = store.get_block_bytes(height)
    if raw is None:
        return genesis.genesis_time_ms
    return codec.decode(raw, Block).header.time_ms


_KINDS: dict[int, Literal["organisation", "clinician", "patient"]] = {
    KIND_ORGANISATION: "organisation",
    KIND_CLINICIAN: "clinician",
    KIND_PATIENT: "patient",
}


_T = TypeVar("_T")


class NodeFacadeImpl:
    """:class:`node.api.facade.NodeFacade` over a running :class:`Node`."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._p = node.parts
        # Reads that can be large (a block of up to 4 MiB decoded and every tx
        # hashed, a 4 MiB blob, an audit log touching many blocks) run in these
        # worker threads: the event loop is shared with consensus.
        self._readers = trio.CapacityLimiter(API_READ_THREADS)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._readers)

    def ready(self) -> bool:
        return self._node.quorum_connected()

    def status(self) -> NodeStatus:
        p = self._p
        replica = p.service.replica
        height = p.store.latest_height() or 0
        return NodeStatus(
            chain_id=p.genesis.chain_id,
            node_id=p.key.public_key,
            height=height,
            view=replica.view,
            primary=replica.vs.primary(replica.view),
            validators=list(p.genesis.validators),
            peers=len(p.transport.connected_peers()),
            state_root=p.store.state_root() or b"",
            extra={"mempool_txs": len(p.mempool)},
        )

    def metrics_text(self) -> bytes:
        return self._p.metrics.render()

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        txh = await self._p.mempool.submit(tx, blob)
        self._p.service.notify_pending()
        return txh

    async def submit_batch(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> Sequence[bytes | LedgerError]:
        results = await self._p.mempool.submit_many(items)
        self._p.service.notify_pending()
        return results

    async def tx_status(self, tx_hash: bytes, prove_it: bool) -> TxStatus:
        # The mempool first (Trio thread): a tx leaves it only after its commit is stored.
        pending = tx_hash in self._p.mempool
        found = await self._off_loop(self._committed_status, tx_hash, prove_it)
        if found is not None:
            return found
        return TxStatus(tx_hash, "pending" if pending else "unknown")

    def _committed_status(self, tx_hash: bytes, prove_it: bool) -> TxStatus | None:
        p = self._p
        loc = p.store.tx_location(tx_hash)
        if loc is None:
            return None
        height, index = loc
        raw_results = p.store.get_results(height)
        code = decode_results(raw_results)[index].code if raw_results is not None else None
        proof: Any = None
        if prove_it:
            proof = self._proof(height, index)
        return TxStatus(tx_hash, "committed", height, index, code, proof)

    def _proof(self, height: int, index: int) -> dict[str, Any]:
        p = self._p
        raw = p.store.get_block_bytes(height)
        cert = p.store.get_certificate(height)
        if raw is None or cert is None:
            raise NotFoundError(f"block {height} is not stored")
        block = codec.decode(raw, Block)
        hashes = [tx.hash() for tx in block.txs]
        return {
            "chain_id": p.genesis.chain_id,
            "height": height,
            "header": block.header,
            "tx": block.txs[index].encode(),
            "inclusion": prove(hashes, index),
            "certificate": cert,
        }

    async def account(self, key: bytes) -> AccountView:
        p = self._p
        ident = StateView(p.store).identity(key)
        if ident is None:
            raise NotFoundError("no identity is registered under that key")
        return AccountView(
            key=key,
            kind=_KINDS[ident.kind],
            org=ident.org,
            nonce=ident.nonce,
            next_nonce=p.mempool.next_nonce(key, ident.nonce),
        )

    async def block(self, height: int | None) -> BlockView:
        if height is not None and height > (self._p.store.latest_height() or 0):
            # Followers poll the next height many times a second: answer the
            # miss on the loop, without a worker-thread round trip.
            raise NotFoundError(f"no committed block at height {height}")
        return await self._off_loop(self._block, height)

    def _block(self, height: int | None) -> BlockView:
        p = self._p
        h = p.store.latest_height() if height is None else height
        if h is None or h < 1:
            raise NotFoundError("no committed block at that height")
        raw = p.store.get_block_bytes(h)
        cert = p.store.get_certificate(h)
        if raw is None or cert is None:
            raise NotFoundError(f"no committed block at height {h}")
        block = codec.decode(raw, Block)
        return BlockView(
            height=h,
            hash=block.hash(),
            header=block.header,
            tx_hashes=[tx.hash() for tx in block.txs],
            certificate=cert,
        )

    async def read_record(self, record_id: bytes, reader: bytes, access_tx: bytes | None) -> object:
        clinical = self._node.clinical
        return await clinical.read_record(record_id, reader, access_tx, limiter=self._readers)

    async def patient_audit(self, patient: bytes, reader: bytes) -> object:
        return await self._off_loop(self._node.clinical.reads.patient_audit, patient, reader)

    async def evidence(self, limit: int, before: int | None) -> object:
        return page_body(await self._off_loop(self._node.evidence.log.page, limit, before))


def run(config: Config, doc: GenesisDoc, key: KeyPair) -> None:
    """``medledger start``: assemble, run until SIGTERM/SIGINT, close cleanly."""
    lc = config.logging
    handler = configure_logging(
        lc.level, json_output=lc.json, modules=_quiet_libp2p(lc.modules)
    )
    handler.addFilter(_drop_root_logger_noise)
    try:
        node = Node.open(config, doc=doc, key=key)
    except StorageIOError as error:  # opening LevelDB or cutting a torn WAL tail writes too
        raise _storage_stopped(config, error, None) from None
    tune_gc()
    try:
        trio.run(node.run)
    except* StorageIOError as group:
        height = node.parts.store.latest_height() or 0
        raise _storage_stopped(config, _first(group), height) from None
    except* OSError as group:
        exc = _first(group)
        if getattr(exc, "errno", None) == errno.EADDRINUSE:
            raise ConfigError(
                f"{config.source}: api.listen {config.api.listen.host}:{config.api.listen.port} "
                "or p2p.listen: address already in use"
            ) from None
        raise


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[_E]) -> _E:
    exc: _E | BaseExceptionGroup[_E] = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _storage_stopped(config: Config, exc: StorageIOError, height: int | None) -> StorageIOError:
    """The one line an operator needs: which data dir, what failed, what to do.

    ``height`` is where a running node stopped; None when it could not start.
    """
    state = "did not start" if height is None else f"stopped cleanly at height {height}"
    stopped = type(exc)(
        f"data dir {config.node.data_dir}",
        exc.where,
        advice=f"{state}; free space (or move the data dir to a bigger disk) and start again",
    )
    log.critical("%s", stopped.message)
    return stopped
