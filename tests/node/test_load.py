"""``medledger load --max-pending``: a bounded backlog keeps a lane inside the nonce window.

The network is a fake behind ``httpx.MockTransport`` that behaves like a node
where it matters here: it refuses a tx more than ``WINDOW`` nonces past its
sender's committed nonce with ``NONCE_GAP`` (node/mempool.py ``_check_nonce``)
and commits at a fixed rate (``PER_BLOCK`` txs every ``BLOCK_S`` of real
time), far below the offered rate. The open loop then runs past the window;
the bounded loader never does. Margins are wide (the open loop would have to
offer 5x slower than scheduled to stay inside), so a busy machine does not
flip the outcome.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import httpx
import pytest
import trio

from ledger import codec
from ledger.keys import KeyPair
from ledger.tx import Tx, tx_hash
from node.load import LoadReport, PreparedTx, prepare_registrations, run_load

URL = "http://fake-node"
WINDOW = 50  # the fake node's max_nonces_ahead
PER_BLOCK = 2
BLOCK_S = 0.01  # so the network commits 200 tx/s
RATE = 1000.0  # offered: 5x what commits
COUNT = 400


@dataclass
class FakeNode:
    """Admission with a nonce window, and blocks that commit on a clock."""

    commits: bool = True
    refuse_all: str | None = None
    started: float | None = None
    next_nonce: dict[bytes, int] = field(default_factory=dict)  # committed, per sender
    pending: list[tuple[bytes, Tx]] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    def _produce(self) -> None:
        if not self.commits or self.started is None:
            return
        due = math.floor((trio.current_time() - self.started) / BLOCK_S)
        while len(self.blocks) < due and self.pending:
            take, self.pending = self.pending[:PER_BLOCK], self.pending[PER_BLOCK:]
            for _, tx in take:
                self.next_nonce[tx.sender] = tx.nonce + 1
            self.blocks.append([h.hex() for h, _ in take])

    def _admit(self, data: bytes) -> dict[str, object]:
        tx = codec.decode(data, Tx)
        committed = self.next_nonce.get(tx.sender, 0)
        queued = [t.nonce for _, t in self.pending if t.sender == tx.sender]
        expected = max(queued, default=committed - 1) + 1
        code = self.refuse_all
        if code is None and tx.nonce > committed + WINDOW:
            code = "NONCE_GAP"
        elif code is None and tx.nonce != expected:
            code = "NONCE_GAP"  # an earlier nonce was refused: the lane is stuck
        if code is not None:
            self.refused[code] = self.refused.get(code, 0) + 1
            return {"error": {"code": code, "message": "refused"}}
        h = tx_hash(data)
        self.pending.append((h, tx))
        return {"hash": h.hex()}

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.started is None:
            self.started = trio.current_time()
        self._produce()
        path = request.url.path
        if path == "/v1/status":
            return httpx.Response(200, json={"height": len(self.blocks)})
        if path == "/v1/txs/batch":
            body = json.loads(request.content)
            results = [self._admit(bytes.fromhex(t["tx"])) for t in body["txs"]]
            return httpx.Response(200, json={"results": results})
        if path.startswith("/v1/blocks/"):
            height = int(path.rsplit("/", 1)[1])
            if height > len(self.blocks):
                return httpx.Response(404, json={"error": {"code": "NOT_FOUND"}})
            return httpx.Response(200, json={"tx_hashes": self.blocks[height - 1]})
        return httpx.Response(404)


@pytest.fixture(scope="module")
def txs() -> list[PreparedTx]:
    hospital = KeyPair.from_seed(b"h" * 32)
    return prepare_registrations([(hospital, 0)], "test-chain", COUNT, seed=1)


async def _run(
    fake: FakeNode, txs: list[PreparedTx], max_pending: int | None, timeout: float = 10.0
) -> LoadReport:
    return await run_load(
        [URL],
        txs,
        rate=RATE,
        tick_s=0.01,  # 10 txs a tick: below the bound, so the bound is what limits
        commit_timeout_s=timeout,
        max_pending=max_pending,
        transport=httpx.MockTransport(fake.handle),
    )


async def test_open_loop_runs_past_the_nonce_window(txs: list[PreparedTx]) -> None:
    """The failure the option exists for (issue 6's 1M run): without a bound, NONCE_GAP."""
    fake = FakeNode()
    report = await _run(fake, txs, max_pending=None)
    assert report.rejected.get("NONCE_GAP", 0) > 0
    assert report.max_backlog > WINDOW
    assert report.committed == report.accepted < COUNT


async def test_max_pending_stays_inside_the_window(txs: list[PreparedTx]) -> None:
    fake = FakeNode()
    report = await _run(fake, txs, max_pending=WINDOW - 10)
    assert report.rejected == {}
    assert fake.refused == {}
    assert report.committed == report.accepted == COUNT
    assert report.unsent == 0
    assert report.max_backlog <= WINDOW - 10
    assert report.paused_s > 0


async def test_refusals_free_the_backlog(txs: list[PreparedTx]) -> None:
    """Refused txs are not pending: a loader whose txs are all refused does not wait."""
    fake = FakeNode(commits=False, refuse_all="MEMPOOL_FULL")
    report = await _run(fake, txs[:100], max_pending=20, timeout=30.0)
    assert report.rejected == {"MEMPOOL_FULL": 100}
    assert report.unsent == 0
    assert report.paused_s < 30.0


async def test_no_commits_gives_up_after_the_timeout(txs: list[PreparedTx]) -> None:
    """A network that stops committing does not hang the loader: the rest is unsent."""
    fake = FakeNode(commits=False)
    report = await _run(fake, txs[:100], max_pending=20, timeout=0.3)
    assert report.committed == 0
    assert report.accepted == 20
    assert report.unsent == 80
    assert report.summary()["unsent"] == 80


def test_max_pending_must_be_positive(txs: list[PreparedTx]) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        trio.run(lambda: _run(FakeNode(), txs[:1], max_pending=0))


async def test_follower_survives_a_timeout(txs: list[PreparedTx]) -> None:
    """A block request that times out is asked again: one slow answer does not end a run."""
    fake = FakeNode()
    failures = [2]

    async def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/blocks/") and failures[0] > 0:
            failures[0] -= 1
            raise httpx.ReadTimeout("node too busy", request=request)
        return await fake.handle(request)

    report = await run_load(
        [URL],
        txs[:40],
        rate=RATE,
        tick_s=0.01,
        commit_timeout_s=10.0,
        transport=httpx.MockTransport(flaky),
    )
    assert report.follow_errors == 2
    assert report.committed == report.accepted == 40


def test_cli_refuses_a_zero_backlog(capsys: pytest.CaptureFixture[str]) -> None:
    """``--max-pending 0`` is a usage error (exit 2), before any network is touched."""
    from node.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["load", "--node", "http://127.0.0.1:9", "--key", "k.json", "--max-pending", "0"])
    assert exit_.value.code == 2
    assert "--max-pending" in capsys.readouterr().err


@pytest.mark.parametrize(("n_nodes", "per_tick"), [(4, 20), (16, 20), (10, 3), (16, 1)])
def test_schedule_sends_every_tx_once_in_lane_order_with_bounded_requests(
    n_nodes: int, per_tick: int
) -> None:
    from node.load import NODES_PER_TICK, _schedule

    txs = [PreparedTx(i.to_bytes(4, "big"), b"", lane=i % n_nodes) for i in range(503)]
    ticks = list(_schedule(txs, n_nodes, per_tick))
    assert len(ticks) == math.ceil(len(txs) / per_tick)  # the offered rate is unchanged
    sent = [p for tick in ticks for _, chunk in tick for p in chunk]
    assert sorted(p.hash for p in sent) == sorted(p.hash for p in txs)  # each once
    for tick in ticks:
        for node, chunk in tick:
            assert all(p.lane % n_nodes == node for p in chunk)
    for node in range(n_nodes):  # a lane's txs leave in order (its nonces)
        mine = [p for tick in ticks for k, chunk in tick if k == node for p in chunk]
        assert mine == [p for p in txs if p.lane % n_nodes == node]
    # requests per tick: as with 4 nodes, however many there are (the last tick flushes)
    every = math.ceil(n_nodes / NODES_PER_TICK)
    assert max(len(tick) for tick in ticks[:-1]) <= math.ceil(n_nodes / every)
    if n_nodes <= NODES_PER_TICK:  # small networks: every node, every tick, as before
        assert all(len(tick) == min(n_nodes, per_tick) for tick in ticks[:-1])
