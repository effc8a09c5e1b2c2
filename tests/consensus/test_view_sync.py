"""A replica left behind in an older view rejoins the network's view.

The regression (10-validator testnet): after view changes under load, the
primary of the old view missed the VIEW-CHANGEs and the NEW-VIEW of the next
one. It was not in a view change itself, and it kept committing through state
transfer, so it was never "stalled" and never sent a STATUS: it followed the
chain on certificates alone and never voted again, one vote lost for good.
Nothing it received told it that the others had moved on.

Here the laggard is the primary of view 0 with an empty mempool (so it never
times out on itself), the others change view without it (every VIEW-CHANGE,
NEW-VIEW and STATUS addressed to it is dropped), then the network heals while
the load goes on. It must be back in the others' view, signing COMMITs, within
a bounded time.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consensus.core import Replica, TimerKind
from consensus.messages import Status, ViewChange, decode_envelope
from consensus.testing import NetConfig, SimNode, Simulation, sim_config

from .helpers import VS, make_replica, sent, signed

_STUCK_KINDS = frozenset({"ViewChange", "NewView", "Status"})
_VOTE_KINDS = frozenset({"PrePrepare", "Prepare", "Commit"})


def _current(r: Replica) -> int:
    return r.vc_target if r.in_view_change else r.view


# --------------------------------------------------------------------------- unit


def test_f_plus_1_status_reports_of_a_higher_view_start_a_view_change() -> None:
    r, _ = make_replica(1)  # n = 4, f = 1
    assert VS.weak_quorum == 2
    assert sent(r.receive(signed(2, Status(0, 2)))) == []
    assert not r.in_view_change
    out = sent(r.receive(signed(3, Status(0, 2))))
    vcs = [e.payload for e in out if isinstance(e.payload, ViewChange)]
    assert [v.new_view for v in vcs] == [2]
    assert r.statistics().in_view_change and r.vc_target == 2


def test_f_plus_1_reports_join_the_f_plus_1_th_highest_view() -> None:
    """A liar reporting a huge view cannot drag us beyond what an honest replica reports."""
    r, _ = make_replica(1)
    r.receive(signed(2, Status(0, 1_000)))
    out = sent(r.receive(signed(3, Status(0, 3))))
    assert [e.payload.new_view for e in out if isinstance(e.payload, ViewChange)] == [3]


def test_f_liars_do_not_move_a_replica() -> None:
    """f validators reporting higher views, however often, leave us where we are."""
    r, _ = make_replica(1)
    for view in (2, 5, 9, 40):
        assert not any(isinstance(e.payload, ViewChange)
                       for e in sent(r.receive(signed(2, Status(0, view)))))
    # Only each sender's latest report counts: the same liar twice is still one.
    assert not r.in_view_change and r.view == 0 and r.statistics().view_changes == 0


def test_a_status_and_a_view_change_from_one_sender_count_once() -> None:
    from consensus.messages import CheckpointProof

    from .helpers import GENESIS

    r, _ = make_replica(1)
    r.receive(signed(2, ViewChange(3, CheckpointProof(0, GENESIS, bytes(32), []), None, [])))
    r.receive(signed(2, Status(0, 3)))
    assert not r.in_view_change
    r.receive(signed(3, Status(0, 3)))
    assert r.statistics().in_view_change and r.vc_target == 3


def test_a_status_reporting_a_lower_view_is_answered_once_per_tick() -> None:
    r, _ = make_replica(1)
    r.view = 2  # as if a NEW-VIEW had been entered
    out = sent(r.receive(signed(3, Status(0, 1))))
    assert [e.payload for e in out] == [Status(0, 2)]
    assert sent(r.receive(signed(3, Status(0, 1)))) == []  # same tick: once
    assert sent(r.receive(signed(2, Status(0, 2)))) == []  # not behind: nothing
    r.timeout(TimerKind.RESEND, r._timer_tokens[TimerKind.RESEND])  # next tick
    out = sent(r.receive(signed(3, Status(0, 1))))
    assert [e.payload for e in out] == [Status(0, 2)]


# --------------------------------------------------------------------------- simulation


def _stuck_then_healed(
    n: int, seed: int, after_heal: str = "",
) -> tuple[Simulation, SimNode, Callable[[], bool]]:
    """The primary of view 0 stays in view 0 while the others move on; then links heal.

    ``after_heal`` keeps losing some messages to the laggard after the heal:
    ``nv_lost`` every NEW-VIEW while it is not in a view change (the primary's
    answer to its STATUS), ``votes_lost`` every vote while it is in view 0 (so
    no hint that the others moved on: only its periodic STATUS can tell it).
    """
    sim = Simulation(n, seed=seed, config=sim_config(), max_txs=2,
                     net=NetConfig(delay_min=1, delay_max=10))
    lag = sim.nodes[0]
    assert sim.vs.primary(0) == lag.id
    others = [nd for nd in sim.nodes if nd is not lag]
    blocked = [True]
    original = sim._send

    commit_views: set[int] = set()  # views the laggard signed a COMMIT in

    def send(src: SimNode, dst: int, data: bytes, kind: str) -> None:
        if src is lag and kind == "Commit":
            commit_views.add(decode_envelope(data, 1 << 30).payload.view)  # type: ignore[union-attr]
        if dst == lag.index:
            if blocked[0] and kind in _STUCK_KINDS:
                return
            r = lag.replica
            if after_heal == "nv_lost" and kind == "NewView" and not r.in_view_change:
                return
            if after_heal == "votes_lost" and kind in _VOTE_KINDS and r.view == 0:
                return
        original(src, dst, data, kind)

    sim._send = send  # type: ignore[method-assign]

    def load() -> None:  # steady load, never in the laggard's mempool
        sim.submit([nd.index for nd in others])
        sim.at(sim.now + 5, load)

    sim.at(0, load)

    def moved_on() -> bool:
        views = {_current(nd.replica) for nd in others}
        return (len(views) == 1 and min(views) >= 1
                and not any(nd.replica.in_view_change for nd in others)
                and min(nd.storage.height for nd in others) >= 40)

    assert sim.run_until(20_000, moved_on), "the others never moved to a new view"
    # The bug's state: behind in view, not in a view change, following by state transfer.
    assert lag.replica.view == 0 and not lag.replica.in_view_change
    assert lag.storage.height > 0 and lag.replica.statistics().state_blocks_received > 0
    blocked[0] = False
    view = others[0].replica.view

    def rejoined() -> bool:
        r = lag.replica
        if r.in_view_change or r.view != view:
            return False
        return view in commit_views  # voting again, not only following by state transfer

    return sim, lag, rejoined


@pytest.mark.parametrize(
    ("n", "seed", "after_heal"),
    [(4, 1, ""), (4, 2, ""), (10, 3, ""), (4, 4, "nv_lost"), (10, 5, "nv_lost"),
     (4, 6, "votes_lost"), (10, 7, "votes_lost")],
)
def test_replica_left_in_an_old_view_rejoins_and_votes_again(
    n: int, seed: int, after_heal: str
) -> None:
    sim, lag, rejoined = _stuck_then_healed(n, seed, after_heal)
    healed = sim.now
    ok = sim.run_until(healed + 3_000, rejoined)
    others = [nd for nd in sim.nodes if nd is not lag]
    assert ok, (
        f"laggard in view {lag.replica.view} (in view change: {lag.replica.in_view_change}), "
        f"others in {sorted({nd.replica.view for nd in others})}, "
        f"heights {lag.storage.height} vs {max(nd.storage.height for nd in others)}"
    )
    assert lag.replica.view == others[0].replica.view
    assert sim.check_safety() == []
    # It keeps committing alongside the others afterwards.
    sim.run_until(sim.now + 1_000)
    assert lag.storage.height >= min(nd.storage.height for nd in others) - 2 * sim.config.window
    assert sim.check_safety() == []
