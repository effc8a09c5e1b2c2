"""``python -m consensus.sim``: cost of PBFT as the validator set grows.

Runs the deterministic simulator (:mod:`consensus.testing`) with every link
delay fixed at ``D`` simulated milliseconds, no loss, and a steady stream of
client txs, and prints per ``n``: point-to-point messages per committed block
(by type) and latency in units of ``D`` -- from the primary's PRE-PREPARE to
commit at each replica, and from tx submission to commit. Latencies are
simulated time, not wall-clock time: they show the protocol's round trips,
independent of this machine. Real signatures are made and checked throughout.

Usage: ``python -m consensus.sim [--sizes 4,7,10,16] [--blocks 40] [--window 4]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

from consensus.testing import NetConfig, Simulation, sim_config

DELAY = 10


@dataclass
class SimResult:
    n: int
    window: int
    blocks: int
    messages: int
    by_kind: dict[str, int]
    block_latency: list[float]  # in link delays
    tx_latency: list[float]  # in link delays
    sim_ms: int
    wall_s: float


def simulate(n: int, *, blocks: int = 40, window: int = 4, txs_per_block: int = 10) -> SimResult:
    started = time.perf_counter()
    cfg = sim_config(
        window=window,
        checkpoint_interval=16,
        progress_timeout_ms=100 * DELAY,
        view_change_timeout_ms=100 * DELAY,
        resend_interval_ms=50 * DELAY,
    )
    net = NetConfig(delay_min=DELAY, delay_max=DELAY)
    sim = Simulation(n, seed=n, config=cfg, net=net, max_txs=txs_per_block)
    total = blocks * txs_per_block
    # Offered load: a tx every DELAY/txs_per_block ms, i.e. one block's worth
    # per link delay -- more than the pipeline can commit, so it stays full.
    step = max(1, DELAY // txs_per_block)
    txs: list[bytes] = []

    def submit() -> None:
        txs.append(sim.submit())

    for i in range(total):
        sim.at(i * step, submit)
    sim.run_until(total * step)
    done = sim.run_until(
        10_000 * DELAY, lambda: len(txs) == total and sim.all_committed(txs, sim.nodes)
    )
    if not done:
        raise SystemExit(f"n={n}: not every tx committed; heights "
                         f"{[x.storage.height for x in sim.nodes]}")
    problems = sim.check_safety()
    if problems:
        raise SystemExit(f"n={n}: safety check failed: {problems[:3]}")
    height = min(x.storage.height for x in sim.nodes)
    block_lat = [
        (t - sim.propose_time[h]) / DELAY
        for h, times in sim.block_commit_times.items()
        if h <= height and h in sim.propose_time
        for t in times
    ]
    tx_lat = [
        (sim.commit_time[(node.index, h)] - sim.submit_time[h]) / DELAY
        for h in txs
        for node in sim.nodes
    ]
    return SimResult(
        n, window, height, sum(sim.messages_sent.values()), dict(sim.messages_sent),
        block_lat, tx_lat, sim.now, time.perf_counter() - started,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(r: SimResult) -> str:
    per = r.messages / r.blocks
    kinds = ("PrePrepare", "Prepare", "Commit", "Checkpoint")
    split = " ".join(f"{r.by_kind.get(k, 0) / r.blocks:6.1f}" for k in kinds)
    return (
        f"| {r.n:3d} | {r.window:2d} | {r.blocks:6d} | {per:8.1f} | {split} "
        f"| {statistics.mean(r.block_latency):5.2f} | {_pct(r.block_latency, 0.99):5.2f} "
        f"| {statistics.mean(r.tx_latency):6.2f} | {r.blocks * 100 / (r.sim_ms / DELAY):6.1f} "
        f"| {r.wall_s:5.1f} |"
    )


HEADER = (
    "|   n |  W | blocks | msgs/blk |  pp/b   prep/b  com/b  ckpt/b "
    "| blk lat | p99 | tx lat | blk/100D | wall s |\n"
    "|-----|----|--------|----------|-------------------------------"
    "|---------|-----|--------|----------|--------|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consensus.sim", description=__doc__)
    parser.add_argument("--sizes", default="4,7,10,16")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--pipelining", action="store_true",
                        help="also compare windows 1, 2, 4, 8 at n = 4")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"# PBFT simulation: link delay D = {DELAY} ms fixed, no loss, real ed25519; "
          f"latencies in units of D (lat = mean, p99), blk lat = PRE-PREPARE -> commit at "
          f"each replica, tx lat = submit -> commit")
    print(HEADER)
    for n in sizes:
        print(_row(simulate(n, blocks=args.blocks, window=args.window)), flush=True)
    if args.pipelining:
        for w in (1, 2, 4, 8):
            print(_row(simulate(4, blocks=args.blocks, window=w)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
