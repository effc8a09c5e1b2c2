"""Directed scenarios on the simulated cluster (discrete events, seeded)."""

from __future__ import annotations

import itertools
from pathlib import Path

from consensus.testing import NetConfig, Simulation, ToyApp, ToyBlock, sim_config
from consensus.wal import FileWAL
from ledger import codec


def _run_until_committed(sim: Simulation, txs: list[bytes], deadline: int) -> None:
    ok = sim.run_until(deadline, lambda: sim.all_committed(txs, [n for n in sim.nodes
                                                                 if n.alive and not n.byzantine]))
    heights = [n.storage.height for n in sim.nodes]
    assert ok, f"not all txs committed by {deadline} ms: heights {heights}"
    assert sim.check_safety() == []


def test_normal_case_pipelines_and_commits_everything() -> None:
    sim = Simulation(4, seed=1, max_txs=4)
    txs = [sim.submit() for _ in range(40)]
    _run_until_committed(sim, txs, 2_000)
    assert all(n.replica.view == 0 for n in sim.nodes)
    assert sum(sim.messages_sent.get(k, 0) for k in ("ViewChange", "NewView")) == 0
    # pipelining: more than one height was in flight at once
    assert max(sim.propose_time) >= 10
    times = sorted(sim.propose_time.values())
    assert times[sim.config.window - 1] == times[0]


def test_primary_crash_view_change_then_progress() -> None:
    sim = Simulation(4, seed=2)
    first = [sim.submit() for _ in range(5)]
    sim.run_until(3)  # pre-prepares are in flight
    sim.crash(0)
    more = [sim.submit([1, 2, 3]) for _ in range(10)]
    _run_until_committed(sim, first + more, 5_000)
    assert all(n.replica.view >= 1 for n in sim.nodes[1:])
    assert all(n.replica.statistics().view_changes >= 1 for n in sim.nodes[1:])


def test_two_faulty_primaries_in_a_row() -> None:
    sim = Simulation(7, seed=3)
    sim.crash(0)
    sim.crash(1)
    txs = [sim.submit() for _ in range(10)]
    _run_until_committed(sim, txs, 10_000)
    views = {n.replica.view for n in sim.nodes[2:]}
    assert len(views) == 1 and min(views) >= 2
    assert sim.nodes[2].replica.statistics().view_changes >= 2


def test_view_change_backoff_doubles_and_is_capped() -> None:
    cfg = sim_config(view_change_timeout_ms=400, max_timeout_ms=800)
    sim = Simulation(10, seed=4, config=cfg)
    for i in (0, 1, 2):  # primaries of views 0, 1 and 2
        sim.crash(i)
    txs = [sim.submit() for _ in range(3)]
    starts: list[int] = []
    node = sim.nodes[5]
    last = 0
    while sim.now < 10_000 and node.replica.view < 3:
        sim.run_until(sim.now + 5)
        if node.replica.vc_target != last:
            last = node.replica.vc_target
            starts.append(sim.now)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) == 2, starts
    assert gaps[1] > gaps[0] + 300  # 400 ms, then 800 ms
    assert max(gaps) <= cfg.max_timeout_ms + 50  # capped (+ link delays of slack)
    _run_until_committed(sim, txs, 20_000)


def test_isolated_replicas_do_not_run_ahead_alone() -> None:
    """Without a quorum of view changes the view-change timer never starts."""
    sim = Simulation(4, seed=4)
    for i in (0, 1):
        sim.crash(i)
    sim.submit()
    sim.run_until(30_000)
    assert {n.replica.vc_target for n in sim.nodes[2:]} == {1}
    assert sim.check_safety() == []


def test_restart_from_wal_mid_view_never_double_votes() -> None:
    """A backup crashes right after voting and restarts from its WAL many times."""
    sim = Simulation(4, seed=5, byzantine={0: "equivocate"}, max_txs=2)
    txs = [sim.submit() for _ in range(30)]
    for t in range(5, 400, 37):
        sim.run_until(t)
        sim.crash(2)
        sim.run_until(t + 3)
        sim.restart(2)
    _run_until_committed(sim, txs, 20_000)
    assert sim.double_votes == []
    assert len(sim.signed_votes) > 0


def test_node_1000_heights_behind_catches_up_by_state_transfer() -> None:
    sim = Simulation(4, seed=6, config=sim_config(window=8), max_txs=1,
                     net=NetConfig(delay_min=1, delay_max=3))
    sim.crash(3)
    txs = [sim.submit([0, 1, 2]) for _ in range(1_000)]
    _run_until_committed(sim, txs, 60_000)
    assert sim.nodes[0].storage.height >= 1_000
    # everything below the stable checkpoint was garbage collected
    assert sim.nodes[0].replica.stable.height >= 1_000 - 2 * sim.config.checkpoint_interval
    sim.restart(3)
    late = sim.submit()
    ok = sim.run_until(sim.now + 10_000, lambda: sim.all_committed([late], sim.nodes))
    assert ok
    stats = sim.nodes[3].replica.statistics()
    assert stats.state_blocks_received >= 990
    assert sim.nodes[3].storage.blocks == sim.nodes[0].storage.blocks[: sim.nodes[3].storage.height]
    assert sim.check_safety() == []


def test_catch_up_despite_a_peer_serving_forged_certificates() -> None:
    sim = Simulation(4, seed=7, byzantine={0: "forge_state"})
    sim.crash(3)
    txs = [sim.submit([0, 1, 2]) for _ in range(20)]
    _run_until_committed(sim, txs, 5_000)
    sim.restart(3)
    late = sim.submit()
    assert sim.run_until(sim.now + 10_000, lambda: sim.all_committed([late], sim.honest()))
    assert sim.check_safety() == []


def test_checkpoints_bound_the_log_and_the_wal() -> None:
    sim = Simulation(4, seed=8, max_txs=1)
    txs = [sim.submit() for _ in range(100)]
    _run_until_committed(sim, txs, 20_000)
    k = sim.config.checkpoint_interval
    for node in sim.nodes:
        r = node.replica
        assert r.stable.height >= 100 - 2 * k
        assert r.buffered_heights() <= sim.config.effective_log_window
        # the WAL holds only what is above the stable checkpoint (a few records per height)
        assert len(node.wal) <= 8 * (r.committed - r.stable.height + sim.config.window) + 4


def test_minority_partition_heals_and_catches_up() -> None:
    sim = Simulation(4, seed=9)
    sim.isolated.add(3)
    txs = [sim.submit() for _ in range(20)]
    sim.run_until(1_500)
    assert sim.nodes[3].storage.height == 0
    sim.isolated.clear()
    _run_until_committed(sim, txs, 20_000)


class TornFileWAL(FileWAL):
    """A file WAL whose crash leaves half a frame at the end, as a torn write would."""

    def crash(self) -> None:
        self._fh.write(b"\x00\x00\x01\x00\xde\xad")  # a header promising 256 bytes
        self._fh.close()


def test_file_wal_crash_with_torn_tail_restarts_without_double_votes(tmp_path: Path) -> None:
    opened: list[int] = []
    truncated: list[int] = []

    def open_wal(i: int) -> FileWAL:
        wal = TornFileWAL(tmp_path / f"wal{i}", fsync=False)
        opened.append(i)
        truncated.append(wal.truncated_bytes)
        return wal

    sim = Simulation(4, seed=10, byzantine={0: "equivocate"}, wal_factory=open_wal, max_txs=2)
    txs = [sim.submit() for _ in range(30)]
    for t in range(7, 300, 41):
        sim.run_until(t)
        sim.crash(3)
        sim.run_until(t + 2)
        sim.restart(3)
    _run_until_committed(sim, txs, 20_000)
    assert opened.count(3) > 5
    assert all(b == 6 for i, b in zip(opened, truncated, strict=True) if i == 3 and b)
    assert sum(1 for i, b in zip(opened, truncated, strict=True) if i == 3 and b == 6) > 5
    assert sim.double_votes == []


def test_equivocating_primary_is_caught_as_evidence_and_is_harmless() -> None:
    sim = Simulation(4, seed=11, byzantine={0: "equivocate"}, max_txs=2)
    txs = [sim.submit() for _ in range(40)]
    _run_until_committed(sim, txs, 20_000)
    evidence = [e for n in sim.honest() for e in n.evidence]
    assert evidence and all(e.validator == sim.keys[0].public_key for e in evidence)
    assert all(e.first != e.second for e in evidence)


def test_restarted_replica_catches_up_in_an_idle_network() -> None:
    """Its STATUS at start is lost (links not up yet) and nobody has work: it still asks again."""
    sim = Simulation(4, seed=9)
    sim.crash(3)
    txs = [sim.submit([0, 1, 2]) for _ in range(60)]
    _run_until_committed(sim, txs, 5_000)
    sim.run_until(sim.now + 2_000)  # let every message in flight land: the network goes idle
    target = sim.nodes[0].storage.height
    sim.isolated.add(3)
    sim.restart(3)
    sim.run_until(sim.now + 50)  # the restart's STATUS went nowhere
    sim.isolated.discard(3)
    assert sim.nodes[3].storage.height == 0
    assert sim.run_until(sim.now + 10_000, lambda: sim.nodes[3].storage.height == target), (
        f"idle laggard stayed at {sim.nodes[3].storage.height} of {target}"
    )
    assert sim.check_safety() == []


def test_many_views_at_one_height_do_not_exhaust_the_per_sender_vote_cap() -> None:
    """Views churn while no COMMIT gets through; once commits flow, the height commits.

    The regression: every view a replica entered added its PRE-PREPARE/PREPARE to
    the slot, and after eight views each sender had used its per-slot vote cap,
    so new PREPAREs were dropped and no view could ever prepare again.
    """
    sim = Simulation(4, seed=31)
    blocked = {"on": True}
    send = sim._send

    def lossy(src: object, dst: int, data: bytes, kind: str) -> None:
        if kind == "Commit" and blocked["on"]:
            return
        send(src, dst, data, kind)  # type: ignore[arg-type]

    sim._send = lossy  # type: ignore[method-assign]
    salts = itertools.count(1)
    for node in sim.nodes:  # every proposal a distinct block, as real proposers' are
        def propose(h: int, parent: bytes, ancestors: object, app: ToyApp = node.app) -> bytes:
            block = ToyApp.propose(app, h, parent, ancestors)  # type: ignore[arg-type]
            if block is None:
                return None  # type: ignore[return-value]
            tb = codec.decode(block, ToyBlock)
            return codec.encode(ToyBlock(tb.height, tb.parent, next(salts), tb.txs))
        node.app.propose = propose  # type: ignore[method-assign]
    txs = [sim.submit() for _ in range(5)]
    assert sim.run_until(60_000, lambda: min(n.replica.view for n in sim.nodes) >= 12)
    assert all(n.storage.height == 0 for n in sim.nodes)
    blocked["on"] = False
    _run_until_committed(sim, txs, sim.now + 60_000)
