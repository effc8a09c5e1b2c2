"""``medledger load``: pre-signed, realistic load for smoke tests and benchmarks.

Signing happens before the clock starts, so the figures measure the network,
not this client. Load is open-loop: batches leave on a fixed schedule whatever
the answers, the way real clinics submit. Submission goes through
``POST /v1/txs/batch`` (one HTTP request per tx cannot carry thousands of tx/s);
commit times are observed by following the chain block by block, not by
polling each tx.

The txs are registrations of new patients by the hospitals whose keys are
given (each hospital's nonces continue from its account's current nonce),
optionally followed by each new patient granting a consent — the two commonest
writes of a clinical day, with no patient data in either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import trio

from ledger import codec
from ledger.keys import KeyPair
from ledger.tx import GrantConsent, RegisterPatient, Tx, make_tx, tx_hash


@dataclass(frozen=True, slots=True)
class PreparedTx:
    hash: bytes
    data: bytes
    lane: int = 0  # the submitter (e.g. hospital) this tx comes from; see run_load


def prepare_registrations(
    orgs: Sequence[tuple[KeyPair, int]], chain_id: str, count: int, *, seed: int = 0
) -> list[PreparedTx]:
    """``count`` RegisterPatient txs, round-robin over ``orgs`` (key, next nonce).

    Patient keys come from a seeded derivation, so a run is reproducible;
    distinct seeds give distinct patients (a second run must not re-register).
    """
    out: list[PreparedTx] = []
    nonces = [nonce for _, nonce in orgs]
    for i in range(count):
        k = i % len(orgs)
        org = orgs[k][0]
        patient = KeyPair.from_seed(_seed32(seed, i))
        tx = make_tx(org, chain_id, nonces[k], RegisterPatient(patient.public_key))
        nonces[k] += 1
        out.append(_prepared(tx, lane=k))
    return out


def prepare_consents(
    chain_id: str, count: int, grantee: bytes, *, seed: int = 0
) -> list[PreparedTx]:
    """Each patient registered by :func:`prepare_registrations` grants one consent."""
    out: list[PreparedTx] = []
    for i in range(count):
        patient = KeyPair.from_seed(_seed32(seed, i))
        body = GrantConsent(
            consent_id=_seed32(seed + 1, i)[:16],
            grantee=grantee,
            categories=["laboratory"],
            record_ids=[],
            purpose="TREAT",
            not_before_ms=0,
            not_after_ms=2**62,
            emergency_allowed=False,
        )
        out.append(_prepared(make_tx(patient, chain_id, 0, body), lane=i))
    return out


def _seed32(seed: int, i: int) -> bytes:
    return b"load" + seed.to_bytes(16, "big") + i.to_bytes(12, "big")


def _prepared(tx: Tx, lane: int) -> PreparedTx:
    data = codec.encode(tx)
    return PreparedTx(tx_hash(data), data, lane)


@dataclass
class LoadReport:
    offered: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    committed: int = 0
    duplicates_committed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    first_submit: float = 0.0
    last_commit: float = 0.0
    first_height: int = 0
    last_height: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return math.nan
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    @property
    def committed_per_s(self) -> float:
        span = self.last_commit - self.first_submit
        return self.committed / span if span > 0 else math.nan

    def summary(self) -> dict[str, object]:
        return {
            "offered": self.offered,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "committed": self.committed,
            "duplicates_committed": self.duplicates_committed,
            "committed_tx_per_s": round(self.committed_per_s, 1),
            "latency_s": {
                "p50": round(self.percentile(50), 4),
                "p95": round(self.percentile(95), 4),
                "p99": round(self.percentile(99), 4),
                "max": round(max(self.latencies_s, default=math.nan), 4),
            },
            "heights": [self.first_height, self.last_height],
        }


def _schedule(
    txs: Sequence[PreparedTx], n_nodes: int, per_tick: int
) -> Iterator[list[tuple[int, list[PreparedTx]]]]:
    """Per tick: (node index, txs) pairs, taking txs in order.

    A lane always goes to the same node (``lane % n_nodes``), the way a
    hospital's application talks to its own hospital's node: a sender's
    nonces then arrive in order at one mempool instead of racing gossip.
    """
    for start in range(0, len(txs), per_tick):
        by_node: dict[int, list[PreparedTx]] = {}
        for p in txs[start : start + per_tick]:
            by_node.setdefault(p.lane % n_nodes, []).append(p)
        yield sorted(by_node.items())


async def run_load(
    node_urls: Sequence[str],
    txs: Sequence[PreparedTx],
    *,
    rate: float,
    tick_s: float = 0.05,
    commit_timeout_s: float = 60.0,
) -> LoadReport:
    """Offer ``txs`` at ``rate`` tx/s, spread over ``node_urls``; follow commits."""
    report = LoadReport(offered=len(txs))
    submitted_at: dict[bytes, float] = {}
    per_tick = max(1, round(rate * tick_s))
    async with httpx.AsyncClient(timeout=30.0) as client:
        start_height = await _height(client, node_urls[0])
        report.first_height = start_height
        done = trio.Event()

        async def submit() -> None:
            t0 = time.monotonic()
            report.first_submit = t0
            async with trio.open_nursery() as nursery:
                for n, tick in enumerate(_schedule(txs, len(node_urls), per_tick)):
                    await trio.sleep_until(_trio_deadline(t0 + n * tick_s))
                    for node, chunk in tick:
                        nursery.start_soon(
                            _submit_chunk, client, node_urls[node], chunk, report, submitted_at
                        )

        async def follow() -> None:
            # Ask for the next block itself (404 until it exists) rather than for
            # /v1/status and then the block: the follower is load on the node it
            # watches, and this saves a request per block.
            height = start_height
            deadline = None
            while not done.is_set():
                while True:
                    r = await client.get(f"{node_urls[0]}/v1/blocks/{height + 1}")
                    if r.status_code == 404:
                        break
                    r.raise_for_status()
                    height += 1
                    now = time.monotonic()
                    for h in r.json()["tx_hashes"]:
                        t = submitted_at.pop(bytes.fromhex(h), None)
                        if t is not None:
                            report.committed += 1
                            report.latencies_s.append(now - t)
                            report.last_commit = now
                    report.last_height = height
                if submit_done.is_set() and not submitted_at:
                    return
                if submit_done.is_set() and deadline is None:
                    deadline = time.monotonic() + commit_timeout_s
                if deadline is not None and time.monotonic() > deadline:
                    return
                await trio.sleep(0.02)

        submit_done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def submit_then_flag() -> None:
                await submit()
                submit_done.set()

            nursery.start_soon(submit_then_flag)
            nursery.start_soon(follow)
    return report


def _trio_deadline(monotonic_at: float) -> float:
    return trio.current_time() + max(0.0, monotonic_at - time.monotonic())


async def _height(client: httpx.AsyncClient, url: str) -> int:
    r = await client.get(f"{url}/v1/status")
    r.raise_for_status()
    return int(r.json()["height"])


async def _submit_chunk(
    client: httpx.AsyncClient,
    url: str,
    chunk: Sequence[PreparedTx],
    report: LoadReport,
    submitted_at: dict[bytes, float],
) -> None:
    body = {"txs": [{"tx": p.data.hex(), "blob": None} for p in chunk]}
    sent = time.monotonic()
    for p in chunk:
        submitted_at[p.hash] = sent
    try:
        r = await client.post(f"{url}/v1/txs/batch", json=body)
    except httpx.HTTPError:
        for p in chunk:
            submitted_at.pop(p.hash, None)
        report.rejected["UNREACHABLE"] = report.rejected.get("UNREACHABLE", 0) + len(chunk)
        return
    if r.status_code >= 400:
        code = r.json().get("error", {}).get("code", str(r.status_code))
        for p in chunk:
            submitted_at.pop(p.hash, None)
        report.rejected[code] = report.rejected.get(code, 0) + len(chunk)
        return
    for p, result in zip(chunk, r.json()["results"], strict=True):
        if "hash" in result and result.get("error") is None:
            report.accepted += 1
        else:
            submitted_at.pop(p.hash, None)
            code = result.get("error", {}).get("code", "UNKNOWN")
            report.rejected[code] = report.rejected.get(code, 0) + 1
