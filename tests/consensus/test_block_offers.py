"""BlockOffers during a view change: bounded in bytes, and still delivered when one is lost.

A replica in a view change sends the new primary every block its VIEW-CHANGE
names as prepared (a BlockOffer each: a whole block). It used to send them
again on every stalled resend tick for as long as the view change lasted, so
a long view change cost a full block per prepared height per tick and
replica. Now each goes once, then on a doubling schedule while the primary is
heard from. The simulated network here is wrapped to drop or count chosen
messages; everything else is the ordinary simulator.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consensus.messages import ViewChange
from consensus.testing import SimNode, Simulation, sim_config

Drop = Callable[[int, int, str], bool]


def _wrap_network(sim: Simulation, drop: Drop) -> dict[tuple[int, str], list[int]]:
    """Drop the messages ``drop(src, dst, kind)`` picks; record (src, kind) -> sizes sent."""
    sent: dict[tuple[int, str], list[int]] = {}
    original = sim._send

    def send(src: SimNode, dst: int, data: bytes, kind: str) -> None:
        sent.setdefault((src.index, kind), []).append(len(data))
        if not drop(src.index, dst, kind):
            original(src, dst, data, kind)

    sim._send = send  # type: ignore[method-assign]
    return sent


def _prepared_heights(node: SimNode) -> list[int]:
    return sorted(h for h, s in node.replica._slots.items() if s.prepared is not None)


@pytest.mark.parametrize("primary_has_blocks", [False, True])
def test_block_offers_stay_bounded_during_a_long_view_change(primary_has_blocks: bool) -> None:
    """Two of four replicas down: the view change cannot finish, and offers do not pile up.

    When the new primary missed the blocks, the offers follow the doubling
    schedule; when its own VIEW-CHANGE shows them prepared, only the first
    round goes.
    """
    sim = Simulation(4, seed=31, config=sim_config(), max_txs=20)
    primary0 = sim.vs.index(sim.vs.primary(0))
    primary1 = sim.vs.index(sim.vs.primary(1))
    others = [i for i in range(4) if i not in (primary0, primary1)]
    offerer, down = others[0], others[1]
    commits_flow = False

    def drop(src: int, dst: int, kind: str) -> bool:
        if kind == "PrePrepare" and dst == primary1 and not primary_has_blocks:
            return True
        return kind == "Commit" and not commits_flow

    sent = _wrap_network(sim, drop)
    for _ in range(60):
        sim.submit()
    assert sim.run_until(2_000, lambda: len(_prepared_heights(sim.nodes[offerer])) >= 2)
    sim.crash(primary0)
    sim.crash(down)
    commits_flow = True
    start = sim.now
    sim.run_until(start + 60_000)

    live = sim.nodes[offerer].replica
    assert live.in_view_change and live.vc_target == 1, "the view change was meant to last"
    own_vc = live._own[("vc", 1, 0)].payload
    assert isinstance(own_vc, ViewChange)
    prepared = [p.height for p in own_vc.prepared]  # what it offers
    assert len(prepared) >= 2
    ticks = 60_000 // sim.config.resend_interval_ms  # 400 stalled resend ticks
    offers = sent.get((offerer, "BlockOffer"), [])
    # Once at the start, then at ticks 2, 4, ..., 256: nine rounds at most in 400 ticks.
    assert len(offers) <= len(prepared) * (1 + ticks.bit_length()), (len(offers), prepared)
    assert sum(offers) <= len(prepared) * (1 + ticks.bit_length()) * max(offers)
    # The old behaviour, one round per tick, would have sent about ticks x prepared.
    assert len(offers) < ticks // 10
    if primary_has_blocks:
        assert len(offers) <= len(prepared)  # it holds them: nothing is sent twice
    else:
        assert len(offers) > len(prepared)  # re-offered on the schedule
    # A second minute adds at most one more round: the cost grows with log(time).
    before = len(sent[(offerer, "BlockOffer")])
    sim.run_until(sim.now + 60_000)
    assert len(sent[(offerer, "BlockOffer")]) - before <= len(prepared)
    assert sim.check_safety() == []


def test_view_change_completes_when_the_first_block_offers_are_lost() -> None:
    """The new primary missed the block and the first offers of it: a re-offer makes it."""
    cfg = sim_config(view_change_timeout_ms=3_000, max_timeout_ms=6_000)
    sim = Simulation(4, seed=32, config=cfg, max_txs=20)
    primary0 = sim.vs.index(sim.vs.primary(0))
    primary1 = sim.vs.index(sim.vs.primary(1))
    replicas = [i for i in range(4) if i not in (primary0, primary1)]
    state = {"commits": False, "offers_lost": 0}

    def drop(src: int, dst: int, kind: str) -> bool:
        if kind == "PrePrepare" and src == primary0 and dst == primary1:
            return True  # the next primary never sees the block
        if kind == "Commit" and not state["commits"]:
            return True  # nothing commits in view 0: the block must be re-proposed
        if kind == "BlockOffer" and state["offers_lost"] < 2:
            state["offers_lost"] += 1  # the first offer of each replica is lost
            return True
        return False

    sent = _wrap_network(sim, drop)
    txs = [sim.submit() for _ in range(5)]
    assert sim.run_until(2_000, lambda: all(_prepared_heights(sim.nodes[i]) for i in replicas)), (
        "the replicas never prepared the block"
    )
    assert not _prepared_heights(sim.nodes[primary1])
    assert (
        1 not in sim.nodes[primary1].replica._slots
        or not sim.nodes[primary1].replica._slots[1].blocks
    ), "the next primary was meant to lack the block"
    sim.crash(primary0)
    state["commits"] = True
    live = [sim.nodes[i] for i in (primary1, *replicas)]
    ok = sim.run_until(sim.now + 20_000, lambda: sim.all_committed(txs, live))
    assert ok, f"heights {[n.storage.height for n in live]}, views {[n.replica.view for n in live]}"
    assert state["offers_lost"] == 2
    assert all(n.replica.view == 1 for n in live), "finished by a later view, not by a re-offer"
    offers = sum(len(sent.get((i, "BlockOffer"), [])) for i in replicas)
    assert offers > 2, "no offer was sent again"
    assert sim.check_safety() == []
