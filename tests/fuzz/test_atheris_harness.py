"""The atheris targets (``tests/fuzz/atheris_fuzz.py``) run, in process, on their seeds.

The long coverage-guided runs happen outside pytest (libFuzzer owns the
process); this keeps the harness from rotting: every target accepts its own
seeds and a few cut or flipped copies, ends each in a value or a typed error
and tallies it. Skipped where the optional ``fuzz`` extra (atheris) is missing.
"""

from __future__ import annotations

import pytest

pytest.importorskip("atheris")

from tests.fuzz.atheris_fuzz import TARGETS
from tests.fuzz.harness import TALLY


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_its_seeds_and_their_mutations(name: str) -> None:
    target, seeds = TARGETS[name]
    assert seeds, name
    before = TALLY[name].cases if name in TALLY else 0
    inputs = [b"", b"\x00", *seeds]
    for seed in seeds:
        inputs += [seed[: len(seed) // 2], seed[:-1], bytes([seed[0] ^ 0x80]) + seed[1:]]
    for data in inputs:
        target(data)
    tally = TALLY[name]
    # Every input is a case, except for the [signed] targets: there only the inputs that
    # decode as a tx body / consensus payload (every seed does) are signed and tried.
    assert len(seeds) <= tally.cases - before <= len(inputs)
    if "[signed]" not in name:
        assert tally.cases - before == len(inputs)
    assert tally.cases == tally.accepted + tally.rejected
