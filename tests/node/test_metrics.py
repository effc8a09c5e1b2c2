"""Node metrics: own registry, Prometheus naming, parseable exposition, a no-op twin."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import NodeMetrics, NoopMetrics

# DESIGN.md's list, by the family name the parser reports
REQUIRED = {
    "medledger_consensus_height",
    "medledger_consensus_view",
    "medledger_consensus_view_changes",
    "medledger_committed_txs",
    "medledger_block_interval_seconds",
    "medledger_commit_latency_seconds",
    "medledger_mempool_txs",
    "medledger_mempool_bytes",
    "medledger_txs_rejected",
    "medledger_p2p_peers",
    "medledger_p2p_messages_received",
    "medledger_p2p_messages_sent",
    "medledger_p2p_messages_dropped",
    "medledger_invalid_signatures",
    "medledger_consensus_equivocations",
    "medledger_state_transfer_target_height",
    "medledger_state_transfer_blocks",
    "medledger_storage_write_seconds",
    "medledger_event_loop_stalls",
    "medledger_api_requests",
}


def families(metrics: NodeMetrics) -> dict[str, prometheus_client.Metric]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def test_exposition_parses_and_follows_conventions() -> None:
    metrics = NodeMetrics()
    metrics.txs_rejected.labels("BAD_SIGNATURE").inc()  # labelled families show once used
    metrics.messages_in.labels("gossip", "tx_batch").inc()
    metrics.messages_out.labels("stream", "prepare").inc()
    metrics.messages_dropped.labels("queue_full").inc()
    metrics.invalid_signatures.labels("tx").inc()
    metrics.equivocations.labels("commit").inc()
    metrics.api_requests.labels("/health", "GET", "200").inc()
    found = families(metrics)
    assert set(found) >= REQUIRED, REQUIRED - set(found)
    for name, family in found.items():
        assert name.startswith("medledger_")
        assert family.documentation, name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert name.endswith(("_seconds", "_bytes", "_txs")), name
            unused = not family.samples  # a labelled family before its first use
            assert unused or any(s.name.endswith("_bucket") for s in family.samples)


def test_values_move() -> None:
    metrics = NodeMetrics()
    metrics.height.set(12)
    metrics.committed_txs.inc(250)
    metrics.commit_latency.observe(0.3)
    metrics.commit_latency.observe(0.03)
    metrics.txs_rejected.labels("MEMPOOL_FULL").inc(2)
    get = metrics.registry.get_sample_value
    assert get("medledger_consensus_height") == 12
    assert get("medledger_committed_txs_total") == 250
    assert get("medledger_commit_latency_seconds_count") == 2
    assert get("medledger_commit_latency_seconds_bucket", {"le": "0.05"}) == 1
    assert get("medledger_txs_rejected_total", {"reason": "MEMPOOL_FULL"}) == 2
    parsed = families(metrics)["medledger_committed_txs"]
    assert [s.value for s in parsed.samples if s.name.endswith("_total")] == [250]


def test_registries_are_private() -> None:
    a, b = NodeMetrics(), NodeMetrics()  # two nodes in one process do not clash
    a.committed_txs.inc()
    assert b.registry.get_sample_value("medledger_committed_txs_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("medledger_committed_txs_total") is None


def test_noop_twin_has_every_instrument() -> None:
    real, noop = NodeMetrics(), NoopMetrics()
    names = {k for k in vars(real) if k != "registry"}
    assert names == {k for k in vars(noop) if k != "registry"}
    for name in names:
        instrument = getattr(noop, name)
        instrument.labels("a", "b", "c")  # any labels, records nothing
    noop.committed_txs.inc()
    noop.commit_latency.observe(1.0)
    noop.height.set(3)
    assert noop.render() == b""
    assert list(noop.registry.collect()) == []
