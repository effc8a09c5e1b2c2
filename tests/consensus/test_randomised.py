"""Randomised, seeded, reproducible schedules on the simulated cluster.

Each schedule draws link delays, drops, duplication and reordering, crashes
and restarts or partitions up to f validators (or makes one validator
Byzantine: equivocating primary, withheld votes, bogus view changes, forged
state transfer), heals everything, submits fresh txs, and checks: agreement,
validity, no tx committed twice, a valid certificate on every committed
block, no honest double vote, and liveness after the heal within a bounded
simulated time. Scenarios (see :func:`consensus.testing.run_schedule`): faults,
byzantine, chaos (rolling faults) and byzantine_chaos. A failing seed is
printed with a one-line replay command.

Seeds move with ``MEDLEDGER_SIM_SEED_BASE`` (default 0) so CI can explore new
schedules while every failure still replays exactly.
"""

from __future__ import annotations

import os

import pytest

from consensus.testing import replay_command, run_schedule

BASE = int(os.environ.get("MEDLEDGER_SIM_SEED_BASE", "0"))
CHUNK = 25



def _run_chunk(n: int, scenario: str, start: int, count: int) -> None:
    failures = []
    for seed in range(BASE + start, BASE + start + count):
        result = run_schedule(seed, n, scenario)
        if not result.ok:
            failures.append(
                f"seed {seed} n={n} {scenario}: {result.problems[:3]}\n"
                f"  replay: {replay_command(seed, n, scenario)}"
            )
    assert not failures, "\n".join(failures)


# (scenario, first seed, count): 500 schedules for n = 4, 100 for n = 7
N4 = [("faults", 0, 200), ("byzantine", 0, 150), ("chaos", 0, 150)]
N7 = [
    ("faults", 1000, 25),
    ("byzantine", 1000, 25),
    ("chaos", 1000, 25),
    ("byzantine_chaos", 1000, 25),
]


def _chunks(plan: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [
        (scenario, start, min(CHUNK, first + count - start))
        for scenario, first, count in plan
        for start in range(first, first + count, CHUNK)
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "start", "count"), _chunks(N4))
def test_n4_schedules(scenario: str, start: int, count: int) -> None:
    _run_chunk(4, scenario, start, count)


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "start", "count"), _chunks(N7))
def test_n7_schedules(scenario: str, start: int, count: int) -> None:
    _run_chunk(7, scenario, start, count)


def test_plan_sizes() -> None:
    assert sum(c for *_, c in _chunks(N4)) >= 500
    assert sum(c for *_, c in _chunks(N7)) >= 100


def test_a_few_schedules_in_the_fast_suite() -> None:
    for seed, scenario in ((1, "faults"), (2, "byzantine")):
        result = run_schedule(seed, 4, scenario)
        assert result.ok, (result.problems, replay_command(seed, 4, scenario))
        assert min(result.heights) > 0


def test_schedules_replay_exactly() -> None:
    a = run_schedule(11, 4, "faults")
    b = run_schedule(11, 4, "faults")
    assert (a.heights, a.sim_time, a.view_changes) == (b.heights, b.sim_time, b.view_changes)


def test_the_checker_catches_a_broken_cluster() -> None:
    """The safety checks are not vacuous: corrupt one node's chain and they fire."""
    from consensus.testing import Simulation

    sim = Simulation(4, seed=3)
    txs = [sim.submit() for _ in range(5)]
    assert sim.run_until(2_000, lambda: sim.all_committed(txs, sim.nodes))
    _digest, block, cert = sim.nodes[1].storage.blocks[0]
    sim.nodes[1].storage.blocks[0] = (bytes(32), block, cert)
    problems = sim.check_safety()
    assert any("agreement" in p for p in problems)
    assert any("certificate" in p for p in problems)
