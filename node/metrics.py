"""The node's metrics, in its own Prometheus registry.

Like CometBFT's per-package metrics structs: one object lists every metric the
node exports, each with one doc line, and a no-op twin (:class:`NoopMetrics`)
lets tests and tools build components without a registry. The registry is the
node's own, never ``prometheus_client``'s global one, so two nodes in one
process (the in-process cluster tests) never share or clash on a metric.

Naming follows Prometheus conventions: the ``medledger_`` prefix, ``_total``
for counters, base units in the name (``_seconds``, ``_bytes``), histograms for
latencies. Labels are small closed sets (error codes, message types, route
templates): never ids, hashes or anything from a patient record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "CONTENT_TYPE_LATEST",
    "CounterLike",
    "GaugeLike",
    "HistogramLike",
    "NodeMetrics",
    "NoopMetrics",
]

PREFIX = "medledger_"

# Latency buckets, in seconds, per kind of wait.
_COMMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BLOCK_INTERVAL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STORAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_STALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_BLOCK_TXS_BUCKETS = (0, 1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_BATCH_BYTES_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 1048576)


class CounterLike(Protocol):
    """What callers may do with a counter (real or no-op)."""

    def inc(self, amount: float = 1) -> None: ...

    def labels(self, *labelvalues: str) -> CounterLike: ...


class GaugeLike(Protocol):
    def set(self, value: float) -> None: ...

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...

    def labels(self, *labelvalues: str) -> GaugeLike: ...


class HistogramLike(Protocol):
    def observe(self, amount: float) -> None: ...

    def labels(self, *labelvalues: str) -> HistogramLike: ...


class _Noop:
    """One object that is every no-op instrument."""

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None

    def labels(self, *labelvalues: str) -> _Noop:
        return self


_NOOP = _Noop()


class _Factory(Protocol):
    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterLike: ...

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeLike: ...

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> HistogramLike: ...


class _RegistryFactory:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterLike:
        assert name.endswith("_total"), name
        # prometheus_client appends ``_total`` itself; give it the base name.
        return Counter(
            PREFIX + name.removesuffix("_total"), doc, list(labels), registry=self.registry
        )

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeLike:
        return Gauge(PREFIX + name, doc, list(labels), registry=self.registry)

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> HistogramLike:
        return Histogram(
            PREFIX + name, doc, list(labels), registry=self.registry, buckets=list(buckets)
        )


class _NoopFactory:
    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterLike:
        return _NOOP

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeLike:
        return _NOOP

    def histogram(
        self, name: str, doc: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> HistogramLike:
        return _NOOP


class NodeMetrics:
    """Every metric of one node, registered in ``registry`` (a fresh one by default).

    Components receive this object (or :class:`NoopMetrics`) and update the
    instruments directly; label values must come from closed sets.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._build(_RegistryFactory(self.registry))

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)

    def _build(self, f: _Factory) -> None:
        # --- consensus -----------------------------------------------------------
        self.height = f.gauge("consensus_height", "Height of the last committed block.")
        self.view = f.gauge("consensus_view", "Current PBFT view number.")
        self.view_changes = f.counter(
            "consensus_view_changes_total", "View changes this node has completed."
        )
        self.equivocations = f.counter(
            "consensus_equivocations_total",
            "Conflicting signed consensus messages detected, by message type.",
            ["type"],
        )
        self.committed_blocks = f.counter("committed_blocks_total", "Blocks committed.")
        self.committed_txs = f.counter("committed_txs_total", "Transactions committed.")
        self.block_txs = f.histogram(
            "block_txs", "Transactions per committed block.", _BLOCK_TXS_BUCKETS
        )
        self.block_interval = f.histogram(
            "block_interval_seconds",
            "Time between two consecutive commits seen by this node.",
            _BLOCK_INTERVAL_BUCKETS,
        )
        self.commit_latency = f.histogram(
            "commit_latency_seconds",
            "Time from admission into this node's mempool to commit.",
            _COMMIT_BUCKETS,
        )
        # --- state transfer --------------------------------------------------------
        self.state_transfer_target_height = f.gauge(
            "state_transfer_target_height", "Height state transfer is catching up to (0: idle)."
        )
        self.state_transfer_blocks = f.counter(
            "state_transfer_blocks_total", "Blocks fetched, verified and applied by state transfer."
        )
        # --- mempool ---------------------------------------------------------------
        self.mempool_txs = f.gauge("mempool_txs", "Transactions waiting in the mempool.")
        self.mempool_bytes = f.gauge("mempool_bytes", "Bytes of transactions in the mempool.")
        self.mempool_blob_bytes = f.gauge(
            "mempool_blob_bytes", "Bytes of sidecar blobs held beside mempool transactions."
        )
        self.txs_accepted = f.counter(
            "txs_accepted_total", "Transactions admitted to the mempool, by source.", ["source"]
        )
        self.txs_rejected = f.counter(
            "txs_rejected_total",
            "Transactions refused at admission, by error code.",
            ["reason"],
        )
        self.mempool_evicted = f.counter(
            "mempool_evicted_total",
            "Transactions dropped from the mempool without commit, by reason.",
            ["reason"],
        )
        self.gossip_batches = f.counter(
            "mempool_gossip_batches_total", "Transaction batches handed to gossip."
        )
        self.gossip_reannounced = f.counter(
            "mempool_gossip_reannounced_total",
            "Pending txs gossiped again because they waited long (gossip is not relayed).",
        )
        self.gossip_batch_bytes = f.histogram(
            "mempool_gossip_batch_bytes",
            "Encoded size of gossiped tx batches.",
            _BATCH_BYTES_BUCKETS,
        )
        # --- p2p -------------------------------------------------------------------
        self.peers = f.gauge("p2p_peers", "Connected validator peers.")
        self.peers_refused = f.counter(
            "p2p_peers_refused_total", "Connections from peers outside the validator allow-list."
        )
        self.messages_in = f.counter(
            "p2p_messages_received_total",
            "Messages received, by channel (gossip/stream) and message type.",
            ["channel", "type"],
        )
        self.messages_out = f.counter(
            "p2p_messages_sent_total",
            "Messages sent, by channel (gossip/stream) and message type.",
            ["channel", "type"],
        )
        self.bytes_in = f.counter(
            "p2p_received_bytes_total", "Payload bytes received, by channel.", ["channel"]
        )
        self.bytes_out = f.counter(
            "p2p_sent_bytes_total", "Payload bytes sent, by channel.", ["channel"]
        )
        self.messages_dropped = f.counter(
            "p2p_messages_dropped_total",
            "Messages dropped instead of delivered, by reason (queue_full, invalid, ...).",
            ["reason"],
        )
        self.invalid_signatures = f.counter(
            "invalid_signatures_total",
            "Signatures that failed verification, by kind (tx, consensus, api).",
            ["kind"],
        )
        self.tx_push = f.counter(
            "tx_push_total",
            "Txs too large for gossip pushed to a validator on a direct stream, by result"
            " (accepted, known, rejected, malformed, unreachable).",
            ["result"],
        )
        # --- blob fetch --------------------------------------------------------------
        self.blob_fetch = f.counter(
            "blob_fetch_total",
            "Record blobs asked of a peer, by result (ok, invalid, not_found, rate_limited,"
            " unavailable), and blobs given up on (gave_up, overflow).",
            ["result"],
        )
        self.blob_fetch_missing = f.gauge(
            "blob_fetch_missing", "Blobs of committed records this node lacks and is fetching."
        )
        self.blob_requests_served = f.counter(
            "blob_requests_served_total",
            "Blob requests answered for peers, by result (sent, not_found, rate_limited,"
            " refused, malformed).",
            ["result"],
        )
        # --- storage ---------------------------------------------------------------
        self.storage_write_latency = f.histogram(
            "storage_write_seconds", "Duration of one LevelDB write batch.", _STORAGE_BUCKETS
        )
        # --- runtime ---------------------------------------------------------------
        self.event_loop_stalls = f.counter(
            "event_loop_stalls_total", "Event-loop stalls over the watchdog threshold."
        )
        self.event_loop_stall_seconds = f.histogram(
            "event_loop_stall_seconds",
            "Lateness of the watchdog's wake-ups that counted as stalls.",
            _STALL_BUCKETS,
        )
        # --- api -------------------------------------------------------------------
        self.api_requests = f.counter(
            "api_requests_total",
            "HTTP API requests, by route template, method and status code.",
            ["route", "method", "status"],
        )
        self.api_latency = f.histogram(
            "api_request_seconds",
            "HTTP API request duration, by route template.",
            _API_BUCKETS,
            ["route"],
        )


class NoopMetrics(NodeMetrics):
    """The same attributes, recording nothing: for tests and tools."""

    def __init__(self) -> None:  # no super().__init__: nothing is registered
        self.registry = CollectorRegistry(auto_describe=True)
        self._build(_NoopFactory())

    def render(self) -> bytes:
        return b""
