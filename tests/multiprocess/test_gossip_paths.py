"""Gossip is origin-only (node.p2p): what relaying used to give must come from elsewhere.

A validator that cannot reach the primary (one broken link, everything else
up) still has its clients' txs committed while the primary stays busy with
others' txs: the validators that hold them announce them again
(``Mempool.reannounce_stale``), so no view change is needed. Without that, the
primary never hears of them, keeps committing others' txs (which counts as
progress), and they wait until the load stops and a view change happens.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from consensus.validators import ValidatorSet
from node.genesis_file import load_genesis
from node.keyfile import load_key_file
from node.load import run_load
from node.runner import LocalTestnet, wait_for
from tests.multiprocess._net import Net, assert_committed_once, metric, stop_and_report

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

N = 4


def _dead_address() -> str:
    """A loopback port nobody listens on: dials to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _cut_link(testnet: LocalTestnet, a: int, b: int, keys: list[bytes]) -> None:
    """Make nodes ``a`` and ``b`` dial each other at a dead address (both directions)."""
    for me, other in ((a, b), (b, a)):
        path = testnet.nodes[me].config_path
        text = path.read_text()
        override = f'peers = ["{keys[other].hex()}@{_dead_address()}"]\n'
        assert "[p2p]\n" in text
        path.write_text(text.replace("[p2p]\n", "[p2p]\n" + override, 1))


@pytest.fixture(scope="module")
def net_without_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Net, int, int]]:
    root: Path = tmp_path_factory.mktemp("gossip-paths")
    testnet = LocalTestnet(root, N)
    testnet.init()
    keys = [load_key_file(n.home / "node_key.json").public_key for n in testnet.nodes]
    genesis = load_genesis(testnet.genesis_path).to_ledger_genesis()
    primary_key = ValidatorSet(genesis.chain_id, genesis.validators).primary(0)
    primary = keys.index(primary_key)
    cut_off = (primary + 1) % N
    _cut_link(testnet, primary, cut_off, keys)
    testnet.start_all()
    try:
        testnet.wait_ready(timeout=90)
        yield Net(testnet), primary, cut_off
    finally:
        stop_and_report(testnet)


def test_txs_of_a_node_cut_off_from_the_busy_primary_commit_without_a_view_change(
    net_without_link: tuple[Net, int, int],
) -> None:
    net, primary, cut_off = net_without_link
    busy = next(i for i in range(N) if i not in (primary, cut_off))

    def both_see_two_peers() -> bool | None:  # the link is really cut (gauges move each second)
        peers = [metric(net.url(i), "medledger_p2p_peers") for i in (primary, cut_off)]
        return True if peers == [N - 2, N - 2] else None

    wait_for(both_see_two_peers, timeout=30, what="the cut nodes to see two peers each")
    busy_txs = net.registrations(800, org_indices=[busy])  # 20 s of load at 40 tx/s
    cut_txs = net.registrations(20, org_indices=[cut_off])

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:

            async def keep_primary_busy() -> None:
                out["busy"] = await run_load(
                    [net.url(busy)], busy_txs, rate=40, commit_timeout_s=60
                )

            nursery.start_soon(keep_primary_busy)
            start = max(net.heights())
            while max(net.heights()) < start + 3:  # the busy load is committing
                await trio.sleep(0.05)
            out["cut"] = await run_load([net.url(cut_off)], cut_txs, rate=100, commit_timeout_s=60)
            out["height_when_cut_done"] = max(net.heights())
            out["busy_running"] = "busy" not in out
        return out

    out = trio.run(scenario)
    cut, busy_report = out["cut"], out["busy"]
    print("cut-off node's txs:", cut.summary())
    print("busy node's txs:", busy_report.summary())
    assert cut.committed == len(cut_txs), "txs of the cut-off node did not all commit"
    # They committed while the primary was still busy with the other load, and
    # in view 0: the primary (which cannot hear the cut-off node) proposed them,
    # so another validator carried them across.
    assert out["busy_running"], (
        "the cut-off node's txs committed only after the busy load ended: "
        "nobody carried them to the primary while it was busy"
    )
    assert busy_report.committed == len(busy_txs)
    assert {int(net.status(i)["view"]) for i in range(N)} == {0}
    reannounced = sum(
        metric(net.url(i), "medledger_mempool_gossip_reannounced_total") for i in range(N)
    )
    assert reannounced >= len(cut_txs)
    assert_committed_once(net, [p.hash for p in cut_txs], busy)
