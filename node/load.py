"""``medledger load``: pre-signed, realistic load for smoke tests and benchmarks.

Signing happens before the clock starts, so the figures measure the network,
not this client. Load is open-loop: batches leave on a fixed schedule whatever
the answers, the way real clinics submit. Submission goes through
``POST /v1/txs/batch`` (one HTTP request per tx cannot carry thousands of tx/s);
commit times are observed by following the chain block by block, not by
polling each tx.

With ``max_pending`` the loader is open-loop only up to a backlog: it pauses
while that many of its submitted txs are uncommitted. A node admits a sender's
txs only up to ``max_nonces_ahead`` past its committed nonce (node/mempool.py),
so an open loop offered above the network's saturation runs past that window
on a long run and every later tx of the lane is refused ``NONCE_GAP`` (issue 6:
67,967 refusals on the way to 1,000,000 txs). A bounded backlog keeps a long
run inside the window and turns overload into a lower offered rate instead.

The txs are registrations of new patients by the hospitals whose keys are
given (each hospital's nonces continue from its account's current nonce),
optionally followed by each new patient granting a consent — the two commonest
writes of a clinical day, with no patient data in either.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
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
    unsent: int = 0  # txs never offered: the backlog did not drain in time (max_pending)
    paused_s: float = 0.0  # time the submitter waited for the backlog to drain
    max_backlog: int = 0  # most submitted-but-uncommitted txs seen right after a submission
    follow_errors: int = 0  # block requests of the follower that failed and were retried

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
            "unsent": self.unsent,
            "paused_s": round(self.paused_s, 2),
            "max_backlog": self.max_backlog,
            "follow_errors": self.follow_errors,
        }


#: Nodes a tick's txs go to at most: larger networks send each node its txs
#: every few ticks instead (see :func:`_schedule`).
NODES_PER_TICK = 4


def _schedule(
    txs: Sequence[PreparedTx], n_nodes: int, per_tick: int
) -> Iterator[list[tuple[int, list[PreparedTx]]]]:
    """Per tick: (node index, txs) pairs, taking txs in order.

    A lane always goes to the same node (``lane % n_nodes``), the way a
    hospital's application talks to its own hospital's node: a sender's
    nonces then arrive in order at one mempool instead of racing gossip.

    With more than :data:`NODES_PER_TICK` nodes, node ``k`` is sent what
    accumulated for it on every ``ceil(n / 4)``-th tick (staggered by ``k``),
    so the client makes as many requests per second as with 4 nodes and
    each carries more txs. Sending every node its 1-2 txs every tick made
    320 requests/s at 16 nodes and 400 tx/s: the loader and the nodes' HTTP
    servers, not the ledger, set the committed rate (2.5 tx/s admitted per
    node). The offered rate is unchanged; a tx's latency counts from when
    it is sent.
    """
    every = max(1, math.ceil(n_nodes / NODES_PER_TICK))
    ticks = math.ceil(len(txs) / per_tick)
    held: dict[int, list[PreparedTx]] = {}
    for t in range(ticks):
        for p in txs[t * per_tick : (t + 1) * per_tick]:
            held.setdefault(p.lane % n_nodes, []).append(p)
        due = [k for k in sorted(held) if t == ticks - 1 or k % every == t % every]
        yield [(k, held.pop(k)) for k in due]


async def run_load(
    node_urls: Sequence[str],
    txs: Sequence[PreparedTx],
    *,
    rate: float,
    tick_s: float = 0.05,
    commit_timeout_s: float = 60.0,
    max_pending: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> LoadReport:
    """Offer ``txs`` at ``rate`` tx/s, spread over ``node_urls``; follow commits.

    ``max_pending`` (None: open loop) bounds the backlog: before each tick the
    submitter waits while sending the tick would leave more than
    ``max_pending`` submitted txs uncommitted (a tick larger than the bound
    goes alone once the backlog is empty), and the schedule then resumes from
    the end of the pause rather than bursting to catch up. Commits are seen
    on the first node, so a lane's backlog is counted from what that node
    committed. If nothing commits for ``commit_timeout_s`` while paused, the
    rest is not sent (``unsent``). ``transport`` replaces the network (tests).
    """
    if max_pending is not None and max_pending < 1:
        raise ValueError("max_pending must be at least 1")
    report = LoadReport(offered=len(txs))
    submitted_at: dict[bytes, float] = {}
    per_tick = max(1, round(rate * tick_s))
    progress = [trio.Event()]  # set (and replaced) whenever the backlog shrinks

    def shrunk() -> None:
        progress[0].set()
        progress[0] = trio.Event()

    async def wait_for_room(size: int) -> bool:
        """Wait until ``size`` more txs keep the backlog within ``max_pending``."""
        assert max_pending is not None
        began = trio.current_time()
        while submitted_at and len(submitted_at) + size > max_pending:
            with trio.move_on_after(commit_timeout_s) as waited:
                await progress[0].wait()
            if waited.cancelled_caught:  # no commit for a whole timeout: give up
                report.paused_s += trio.current_time() - began
                return False
        report.paused_s += trio.current_time() - began
        return True

    async with httpx.AsyncClient(timeout=30.0, transport=transport) as client:
        start_height = await _height(client, node_urls[0])
        report.first_height = start_height
        done = trio.Event()

        async def submit() -> None:
            t0 = time.monotonic()
            report.first_submit = t0
            sent = 0
            async with trio.open_nursery() as nursery:
                for n, tick in enumerate(_schedule(txs, len(node_urls), per_tick)):
                    await trio.sleep_until(_trio_deadline(t0 + n * tick_s))
                    size = sum(len(chunk) for _, chunk in tick)
                    if max_pending is not None and len(submitted_at) + size > max_pending:
                        paused_from = time.monotonic()
                        if not await wait_for_room(size):
                            report.unsent = len(txs) - sent
                            break
                        t0 += time.monotonic() - paused_from  # resume, do not burst
                    now = time.monotonic()
                    for node, chunk in tick:
                        for p in chunk:  # pending from now on, before the request runs
                            submitted_at[p.hash] = now
                        url = node_urls[node]
                        args = (client, url, chunk, report, submitted_at, shrunk)
                        nursery.start_soon(_submit_chunk, *args)
                    sent += size
                    report.max_backlog = max(report.max_backlog, len(submitted_at))

        async def follow() -> None:
            # Ask for the next block itself (404 until it exists) rather than for
            # /v1/status and then the block: the follower is load on the node it
            # watches, and this saves a request per block. A transport error (a
            # node too busy to answer within the client timeout on a long run)
            # is counted and the block asked again, not the end of the run.
            height = start_height
            deadline = None
            while not done.is_set():
                while True:
                    try:
                        r = await client.get(f"{node_urls[0]}/v1/blocks/{height + 1}")
                    except httpx.TransportError:
                        report.follow_errors += 1
                        break
                    if r.status_code == 404:
                        break
                    r.raise_for_status()
                    height += 1
                    now = time.monotonic()
                    ours = 0
                    for h in r.json()["tx_hashes"]:
                        t = submitted_at.pop(bytes.fromhex(h), None)
                        if t is not None:
                            ours += 1
                            report.committed += 1
                            report.latencies_s.append(now - t)
                            report.last_commit = now
                    report.last_height = height
                    if ours:
                        shrunk()
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
    shrunk: Callable[[], None],
) -> None:
    """POST one chunk (already marked in ``submitted_at``); unmark what is refused."""
    body = {"txs": [{"tx": p.data.hex(), "blob": None} for p in chunk]}
    refused: dict[str, list[PreparedTx]] = {}
    try:
        r = await client.post(f"{url}/v1/txs/batch", json=body)
    except httpx.HTTPError:
        refused["UNREACHABLE"] = list(chunk)
    else:
        if r.status_code >= 400:
            refused[r.json().get("error", {}).get("code", str(r.status_code))] = list(chunk)
        else:
            for p, result in zip(chunk, r.json()["results"], strict=True):
                if "hash" in result and result.get("error") is None:
                    report.accepted += 1
                else:
                    code = result.get("error", {}).get("code", "UNKNOWN")
                    refused.setdefault(code, []).append(p)
    for code, ps in refused.items():
        for p in ps:
            submitted_at.pop(p.hash, None)
        report.rejected[code] = report.rejected.get(code, 0) + len(ps)
    if refused:
        shrunk()
