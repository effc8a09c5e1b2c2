"""The node process's garbage-collector settings.

CPython's cyclic collector runs its youngest generation every 700 container
allocations and the older ones every 10 of those. A node under load allocates
millions of short-lived containers a second (decoded txs, msgspec structs,
Trio and libp2p bookkeeping), almost none of them in reference cycles, so the
default thresholds spend their time re-scanning the survivors: measured at
8-10 % of a saturated node's CPU (``medledger bench``, BENCHMARKS.md), and
about 2 % with the thresholds below. Cycles are still collected, just in
larger, rarer passes; a full pass still runs after 400 young ones.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

#: Container allocations (net of frees) between collections of the youngest generation.
YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Raise the collection thresholds for the rest of the process (the node's ``run``)."""
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
