"""Pipelined state transfer: whole batches, requests ahead of execution, bounded buffers.

Catch-up used to send the next STATE-REQUEST only after the blocks of the
previous answer were executed, and, once it had reached the last height it
knew of, it probed one block per round trip: in an idle network a laggard
fetched 1,000 heights one at a time. Here the simulator drives a laggard and
the tests look at the effects it emits, in the order the driver performs them.
"""

from __future__ import annotations

from consensus.core import CommitBlock, Effect, SendTo
from consensus.testing import NetConfig, SimNode, Simulation, sim_config

LAGGARD = 3


def _lagging(seed: int, heights: int, *, max_txs: int = 1, **cfg: int) -> Simulation:
    """Three replicas commit ``heights`` single-tx blocks while the fourth is down; then idle."""
    sim = Simulation(
        4,
        seed=seed,
        config=sim_config(window=8, **cfg),
        max_txs=max_txs,
        net=NetConfig(delay_min=1, delay_max=3),
    )
    sim.crash(LAGGARD)
    txs = [sim.submit([0, 1, 2]) for _ in range(heights * max_txs)]
    assert sim.run_until(120_000, lambda: sim.all_committed(txs, sim.nodes[:LAGGARD]))
    sim.run_until(sim.now + 2_000)  # every message in flight lands: the network is idle
    return sim


def _caught_up(sim: Simulation) -> bool:
    return sim.nodes[LAGGARD].storage.height == sim.nodes[0].storage.height


def test_idle_network_catch_up_fetches_whole_batches() -> None:
    sim = _lagging(41, 1_000)
    top = sim.nodes[0].storage.height
    sim.restart(LAGGARD)
    start = sim.now
    assert sim.run_until(start + 10_000, lambda: _caught_up(sim)), (
        f"laggard at {sim.nodes[LAGGARD].storage.height} of {top} after 10 s"
    )
    stats = sim.nodes[LAGGARD].replica.statistics()
    batches = -(-top // sim.config.state_batch)
    # One request per batch, plus the pipelined ones past the tip that find nothing.
    assert stats.state_requests_sent <= batches + 2 * sim.config.state_pipeline + 2, stats
    assert sim.now - start < 3_000
    assert sim.check_safety() == []


def test_next_request_goes_out_before_the_blocks_execute() -> None:
    """While one answer executes, the next ranges are already asked for; buffers stay bounded."""
    sim = _lagging(42, 600)
    node = sim.nodes[LAGGARD]
    original = sim._run
    seen = {"answers": 0, "ahead": 0, "busy": 0, "in_flight": 0, "buffered": 0}

    def run(target: SimNode, effects: list[Effect]) -> None:
        if target is node and any(isinstance(e, CommitBlock) for e in effects):
            first_commit = next(i for i, e in enumerate(effects) if isinstance(e, CommitBlock))
            asks = [
                i
                for i, e in enumerate(effects)
                if isinstance(e, SendTo) and e.kind == "StateRequest"
            ]
            seen["answers"] += 1
            seen["ahead"] += bool(asks) and min(asks) < first_commit
            seen["busy"] += bool(node.replica._st_requests)
        original(target, effects)
        if target is node:
            seen["in_flight"] = max(seen["in_flight"], len(node.replica._st_requests))
            seen["buffered"] = max(seen["buffered"], len(node.replica._st_buffer))

    sim._run = run  # type: ignore[method-assign]
    sim.restart(LAGGARD)
    assert sim.run_until(sim.now + 10_000, lambda: _caught_up(sim))
    cfg = sim.config
    assert seen["answers"] >= 600 // cfg.state_batch
    # Nearly every answer asked for more before its blocks were handed to execution,
    # and a request was in flight while they executed (all but the last ones).
    assert seen["ahead"] >= seen["answers"] - 3, seen
    assert seen["busy"] >= seen["answers"] - 3, seen
    assert seen["in_flight"] == cfg.state_pipeline, seen
    assert seen["buffered"] <= (cfg.state_pipeline + 1) * cfg.state_batch, seen
    assert sim.check_safety() == []


def test_catch_up_over_a_reordering_lossy_network_with_cut_answers() -> None:
    """Answers overtake each other, repeat, get lost and are cut by bytes: still exact."""
    sim = _lagging(43, 120, max_txs=20, max_message_size=20_000, state_batch=16)
    sim.net = NetConfig(delay_min=1, delay_max=60, drop=0.05, duplicate=0.2)
    sim.restart(LAGGARD)
    assert sim.run_until(sim.now + 60_000, lambda: _caught_up(sim)), (
        f"laggard at {sim.nodes[LAGGARD].storage.height} of {sim.nodes[0].storage.height}"
    )
    # ToyApp.commit refuses any height out of order, so each height executed once, in order.
    assert sim.largest_message["StateResponse"] <= 20_000
    assert sim.check_safety() == []
    assert sim.nodes[LAGGARD].storage.blocks == sim.nodes[0].storage.blocks
