"""Issue 4 acceptance: real node processes, real libp2p on loopback, real LevelDB.

One 4-validator testnet serves the whole module (starting one costs seconds);
tests run in file order and each leaves the network healthy for the next.
Every wait is a condition with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ledger import codec
from ledger.keys import KeyPair
from ledger.tx import RegisterPatient, make_tx
from node.config import Config, HostPort
from node.genesis_file import load_genesis
from node.keyfile import load_key_file
from node.load import run_load
from node.p2p import Transport
from node.runner import LocalTestnet, wait_for
from tests.multiprocess._net import (
    Net,
    assert_committed_once,
    assert_same_chain,
    metric,
    stop_and_report,
    wait_same_tip,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

N = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root: Path = tmp_path_factory.mktemp("testnet")
    testnet = LocalTestnet(root, N)
    testnet.init()
    testnet.start_all()
    try:
        testnet.wait_ready(timeout=90)
        yield Net(testnet)
    finally:
        stop_and_report(testnet)


def _load(net: Net, count: int, rate: float, nodes: list[int] | None = None) -> Any:
    urls = [net.url(i) for i in (nodes or range(N))]
    txs = net.registrations(count)
    report = trio.run(lambda: run_load(urls, txs, rate=rate, commit_timeout_s=60))
    return txs, report


def test_testnet_reaches_ready_and_commits(net: Net) -> None:
    for i in range(N):
        assert net.t.nodes[i].is_ready()
        st = net.status(i)
        assert len(st["validators"]) == N
    _, report = _load(net, 20, rate=100)
    assert report.committed == 20, report.summary()
    assert min(net.heights()) >= 1 or wait_same_tip(net, list(range(N))) >= 1


def test_2000_txs_committed_exactly_once_on_identical_chains(net: Net) -> None:
    txs, report = _load(net, 2000, rate=500)
    print("load:", report.summary())
    assert report.accepted == 2000, report.summary()
    assert report.committed == 2000, report.summary()
    wait_same_tip(net, list(range(N)))
    assert_same_chain(net, list(range(N)))
    assert_committed_once(net, [p.hash for p in txs], node=0)


def test_metrics_parse_and_move(net: Net) -> None:
    def committed_total() -> float:
        text = httpx.get(f"{net.url(1)}/metrics", timeout=5).text
        for fam in text_string_to_metric_families(text):
            if fam.name == "medledger_committed_txs":
                return sum(s.value for s in fam.samples if s.name.endswith("_total"))
        raise AssertionError("medledger_committed_txs_total missing")

    before = committed_total()
    _load(net, 50, rate=200)
    wait_for(lambda: committed_total() >= before + 50, timeout=30, what="metric to move")


def test_bad_input_is_refused_and_node_keeps_running(net: Net) -> None:
    url = net.url(2)
    org = net.orgs[2]
    good = make_tx(org, net.chain_id, net.nonces[org.public_key], RegisterPatient(b"\x01" * 32))
    raw = bytearray(codec.encode(good))
    raw[-1] ^= 0x01  # flip a signature bit
    with httpx.Client(timeout=10) as c:
        r = c.post(f"{url}/v1/txs", json={"tx": bytes(raw).hex()})
        assert r.status_code in (400, 422) and r.json()["error"]["code"] == "BAD_SIGNATURE"
        json_type = {"content-type": "application/json"}
        r = c.post(f"{url}/v1/txs", content=b"{not json", headers=json_type)
        assert r.status_code == 400 and r.json()["error"]["code"] == "MALFORMED"
        r = c.post(f"{url}/v1/txs", json={"tx": "zz"})
        assert r.status_code == 400
        r = c.post(f"{url}/v1/txs", content=b"x" * (9 * 1024 * 1024))
        assert r.status_code == 413 and r.json()["error"]["code"] == "TOO_LARGE"
        assert c.get(f"{url}/health").status_code == 200
    assert net.t.nodes[2].running


def test_sigterm_exits_zero_and_restarts_without_recovery(net: Net) -> None:
    i = 3
    height_before = net.heights([i])[0]
    assert net.t.stop(i) == 0
    log = net.t.nodes[i].log_path.read_text(errors="replace")
    assert "stopped cleanly" in log
    net.t.start(i)
    net.t.wait_ready([i], timeout=60)
    assert net.heights([i])[0] >= height_before
    _load(net, 40, rate=200)
    wait_same_tip(net, list(range(N)))


def test_kill_primary_under_load_view_changes_and_loses_nothing(net: Net) -> None:
    st = net.status(0)
    primary = bytes.fromhex(st["primary"])
    pi = next(i for i, k in enumerate(net.orgs) if k.public_key == primary)
    survivors = [i for i in range(N) if i != pi]
    view_before = int(st["view"])
    urls = [net.url(i) for i in survivors]
    txs = net.registrations(600, org_indices=survivors)

    async def scenario() -> Any:
        async with trio.open_nursery() as nursery:
            result: dict[str, Any] = {}

            async def load() -> None:
                result["report"] = await run_load(urls, txs, rate=150, commit_timeout_s=90)

            nursery.start_soon(load)
            # Kill once the load is visibly flowing: the network has moved on.
            start = max(net.heights(survivors))
            while max(net.heights(survivors)) < start + 3:
                await trio.sleep(0.05)
            net.t.kill(pi)
        return result["report"]

    report = trio.run(scenario)
    print("load during primary crash:", report.summary())
    lost = report.accepted - report.committed
    assert lost == 0, f"{lost} accepted txs were not committed"
    assert max(int(net.status(i)["view"]) for i in survivors) > view_before
    net.t.start(pi)
    net.t.wait_ready([pi], timeout=60)
    _load(net, 20, rate=100, nodes=survivors)
    wait_same_tip(net, list(range(N)), timeout=90)
    assert_same_chain(net, list(range(N)))


def test_killed_replica_catches_up_200_blocks_by_state_transfer(net: Net) -> None:
    primary = bytes.fromhex(net.status(0)["primary"])
    victim = next(i for i, k in enumerate(net.orgs) if k.public_key != primary)
    others = [i for i in range(N) if i != victim]
    net.t.kill(victim)
    start = max(net.heights(others))
    # Small batches, so each becomes its own block: 200+ heights quickly.
    while max(net.heights(others)) < start + 200:
        _load(net, 20, rate=400, nodes=others)
    net.t.start(victim)
    net.t.wait_ready([victim], timeout=90)
    wait_same_tip(net, list(range(N)), timeout=120)
    assert_same_chain(net, list(range(N)))


def test_non_validator_peer_is_refused(net: Net) -> None:
    doc = load_genesis(net.t.genesis_path)
    target = doc.validators[0]
    ti = next(i for i, k in enumerate(net.orgs) if k.public_key == target.public_key)
    url = net.url(ti)
    before = metric(url, "medledger_p2p_peers_refused_total")
    stranger = KeyPair.generate()

    async def knock() -> None:
        cfg = dataclasses.replace(Config().p2p, listen=HostPort("127.0.0.1", 0))
        transport = Transport(
            cfg,
            stranger,
            {stranger.public_key: None, target.public_key: target.p2p_address},
            chain_id=doc.chain_id,
            private_network_key=doc.private_network_key,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            transport.send_to(target.public_key, b"let me in")
            with trio.fail_after(30):
                while (
                    await trio.to_thread.run_sync(metric, url, "medledger_p2p_peers_refused_total")
                    <= before
                ):
                    await trio.sleep(0.1)
                    transport.send_to(target.public_key, b"let me in")
            nursery.cancel_scope.cancel()

    trio.run(knock)
    assert net.t.nodes[ti].running
    assert net.t.nodes[ti].is_ready()
    # Only the validators are its peers: the outsider was disconnected, not admitted.
    wait_for(lambda: net.status(ti)["peers"] == N - 1, timeout=30, what="validators-only peers")


def test_full_mempool_answers_503_and_the_node_keeps_running(tmp_path: Path) -> None:
    # A node without a quorum never commits, so its mempool fills deterministically.
    testnet = LocalTestnet(tmp_path / "lonely", N)
    testnet.init()
    node = testnet.nodes[0]
    with node.config_path.open("a") as f:
        f.write("\n[mempool]\nmax_txs = 5\n")
    org = load_key_file(node.home / "node_key.json")
    chain_id = load_genesis(testnet.genesis_path).chain_id
    with testnet:
        testnet.start(0)
        wait_for(lambda: node.status(), timeout=60, what="node0 to answer")
        codes = []
        with httpx.Client(timeout=10) as c:
            for nonce in range(6):
                body = RegisterPatient(KeyPair.from_seed(bytes([nonce + 1]) * 32).public_key)
                tx = codec.encode(make_tx(org, chain_id, nonce, body))
                r = c.post(f"{node.api_url}/v1/txs", json={"tx": tx.hex()})
                codes.append((r.status_code, r.json().get("error", {}).get("code")))
            assert codes[:5] == [(202, None)] * 5
            assert codes[5] == (503, "MEMPOOL_FULL")
            assert c.get(f"{node.api_url}/health").status_code == 200
            assert c.get(f"{node.api_url}/ready").status_code == 503  # no quorum
        assert testnet.stop(0) == 0
