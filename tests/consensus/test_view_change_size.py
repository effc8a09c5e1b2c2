"""View changes stay small however big blocks are and however far the checkpoint lags.

The regression: a VIEW-CHANGE carried every prepared block above the stable
checkpoint, and a NEW-VIEW a quorum of those. Under load (big blocks, a
checkpoint every 100 heights) a NEW-VIEW outgrew the network's frame limit,
every replica dropped it, and the cluster cycled through views forever. Here
the simulated network drops any message above ``max_message_size`` exactly as
the node's transport does, blocks are large, and the primary fails mid-stream.
"""

from __future__ import annotations

import pytest

from consensus.testing import Simulation, sim_config

TXS_PER_BLOCK = 150  # about 22 KB per block with the simulator's txs
FRAME = 100_000  # about four blocks: the old NEW-VIEW needed a dozen and more


def _sim(seed: int) -> Simulation:
    cfg = sim_config(checkpoint_interval=100, max_message_size=FRAME, state_batch=64)
    return Simulation(4, seed=seed, config=cfg, max_txs=TXS_PER_BLOCK)


@pytest.mark.parametrize("seed", [11, 12])
def test_primary_crash_under_big_blocks_recovers_with_small_view_changes(seed: int) -> None:
    sim = _sim(seed)
    txs = [sim.submit() for _ in range(30 * TXS_PER_BLOCK)]
    sim.run_until(400)  # a stretch of heights commits above the (lagging) checkpoint
    assert min(n.storage.height for n in sim.nodes) >= 8, "no load committed before the crash"
    sim.crash(0)
    txs += [sim.submit([1, 2, 3]) for _ in range(10 * TXS_PER_BLOCK)]
    live = sim.nodes[1:]
    ok = sim.run_until(30_000, lambda: sim.all_committed(txs, live))
    heights = [n.storage.height for n in live]
    assert ok, f"seed {seed}: stuck at heights {heights}, views {[n.replica.view for n in live]}"
    assert sim.check_safety() == []
    assert all(n.replica.view >= 1 for n in live)
    sizes = sim.largest_message
    assert sizes.get("PrePrepare", 0) > 15_000, f"blocks too small to test anything: {sizes}"
    assert sizes["ViewChange"] < 10_000, sizes
    assert sizes["NewView"] < 30_000, sizes
    assert max(sizes.values()) <= FRAME, sizes


def test_lagging_replica_catches_up_through_byte_bounded_state_transfer() -> None:
    """64 big blocks do not fit one frame: responses are cut by bytes, and the laggard goes on."""
    sim = _sim(21)
    sim.crash(3)
    txs = [sim.submit([0, 1, 2]) for _ in range(40 * TXS_PER_BLOCK)]
    assert sim.run_until(30_000, lambda: sim.all_committed(txs, sim.nodes[:3]))
    sim.restart(3)
    assert sim.run_until(60_000, lambda: sim.nodes[3].storage.height
                         == sim.nodes[0].storage.height), (
        f"laggard at {sim.nodes[3].storage.height}, others at {sim.nodes[0].storage.height}"
    )
    assert sim.nodes[3].replica.statistics().state_blocks_received >= 30
    assert sim.largest_message["StateResponse"] <= FRAME
    assert sim.check_safety() == []
