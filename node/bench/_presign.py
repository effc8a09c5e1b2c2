"""Pre-signed load, made in separate processes so signing is never on the clock.

Signing a registration (a patient key derivation plus an ed25519 signature)
costs about as much as verifying it; done in the benchmark's own process it
would steal the CPU the nodes are being measured on, and done lazily it would
be counted in the latency. A pool of worker processes signs each phase's txs
before the phase starts, while the network is idle; only bytes come back.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from types import TracebackType

from ledger.keys import KeyPair
from node.load import PreparedTx, prepare_registrations

__all__ = ["Presigner"]

_MAX_CHUNKS = 64


def _sign_chunk(
    org_seeds: Sequence[bytes], nonces: Sequence[int], chain_id: str, count: int, seed: int
) -> list[PreparedTx]:
    orgs = [(KeyPair.from_seed(s), n) for s, n in zip(org_seeds, nonces, strict=True)]
    return prepare_registrations(orgs, chain_id, count, seed=seed)


class Presigner:
    """A pool of signing processes (spawned, so no node or Trio state is inherited)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, min(workers, _MAX_CHUNKS))
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
        )

    def registrations(
        self,
        orgs: Sequence[tuple[KeyPair, int]],
        chain_id: str,
        count: int,
        *,
        seed: int,
    ) -> list[PreparedTx]:
        """What :func:`node.load.prepare_registrations` returns, signed in the pool.

        The round-robin over ``orgs`` is split into whole rounds per worker, so
        every org's nonces stay consecutive and ``lane`` is the org's index, as
        in a single call. ``seed`` must differ between calls made on one chain
        (patients are derived from it and can be registered once).
        """
        n = len(orgs)
        rounds = -(-count // n)
        per_chunk = -(-rounds // self.workers) * n
        seeds = [k.seed for k, _ in orgs]
        futures = []
        for c, start in enumerate(range(0, count, per_chunk)):
            size = min(per_chunk, count - start)
            nonces = [nonce + start // n for _, nonce in orgs]
            futures.append(
                self._pool.submit(
                    _sign_chunk, seeds, nonces, chain_id, size, seed * _MAX_CHUNKS + c
                )
            )
        out: list[PreparedTx] = []
        for f in futures:
            out.extend(f.result())
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Presigner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
