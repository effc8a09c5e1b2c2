"""The verification ceiling, measured on this machine in the same run.

Every validator verifies every transaction's ed25519 signature at least once,
so N validators sharing C cores cannot commit more than
``verifications/s per core x C / N`` transactions per second. The benchmark
measures that figure itself (PyNaCl, one core, the same call the ledger uses)
instead of quoting a number from another machine or another load average.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ledger.keys import KeyPair, verify

__all__ = ["Ceiling", "measure_ceiling", "usable_cores"]


@dataclass(frozen=True, slots=True)
class Ceiling:
    verifications_per_s_per_core: float
    cores: int
    validators: int

    @property
    def tx_per_s(self) -> float:
        return self.verifications_per_s_per_core * self.cores / self.validators


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0))


def measure_ceiling(validators: int, *, seconds: float = 1.0) -> Ceiling:
    """Verify one ~200-byte signed message in a loop for ``seconds`` on one core."""
    key = KeyPair.from_seed(b"\x07" * 32)
    message = bytes(range(200))
    sig = key.sign(message)
    pub = key.public_key
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            if not verify(pub, message, sig):
                raise RuntimeError("a valid signature failed to verify")
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            break
    return Ceiling(count / (now - start), usable_cores(), validators)
