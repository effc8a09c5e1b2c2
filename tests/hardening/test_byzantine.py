"""Issue 8: one Byzantine validator among four real node processes.

Each behaviour of :mod:`tests.hardening.byzantine_node` gets a testnet of its
own in which the Byzantine process is validator 0 of the genesis, i.e. the
primary of view 0: a behaviour that breaks the primary's duty (equivocation,
bad signatures, withheld votes) forces the honest three through a view change
before anything commits. Then signed txs are submitted to the honest nodes
only, and the test checks:

* safety: the honest nodes hold identical block hashes at every common
  height, and no tx is in two blocks;
* liveness: every submitted tx commits within the deadline, exactly once;
* evidence and metrics, where the behaviour is detectable: equivocation is
  logged as evidence naming the Byzantine validator and counted in
  ``medledger_consensus_equivocations_total``; bad signatures in
  ``medledger_invalid_signatures_total{kind="consensus"}``; oversized frames
  in ``medledger_p2p_messages_dropped_total{reason="invalid_frame"}``; the
  flood in the out-of-window / over-cap drop counters.

The flood test adds API clients hammering one honest node
(:mod:`tests.hardening.api_flood`) and asserts the resource bound of
``SECURITY.md``: every honest node's peak RSS (``VmHWM``) under 400 MB. It
lasts ``MEDLEDGER_FLOOD_S`` seconds (10 here; the 60 s figures in
``SECURITY.md`` come from ``MEDLEDGER_FLOOD_S=60``); ``MEDLEDGER_FLOOD_RATE``,
``MEDLEDGER_API_CLIENTS`` and ``MEDLEDGER_API_KINDS`` vary the two floods
when investigating.

Every wait is a condition with a deadline; every process is stopped in a
``finally``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from consensus.messages import Envelope
from consensus.validators import ValidatorSet
from ledger import codec
from node.bench._procfs import read_proc_stats
from node.genesis_file import load_genesis
from node.keyfile import load_key_file
from node.load import LoadReport, PreparedTx, prepare_registrations, run_load
from node.runner import LocalNode, LocalTestnet, wait_for
from tests.hardening.api_flood import KINDS, ApiFloodReport, api_flood
from tests.multiprocess import _net
from tests.multiprocess._net import assert_same_chain, metric, stop_and_report

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

N = 4
REPO = Path(__file__).resolve().parents[2]
HARNESS = "tests.hardening.byzantine_node"


class ByzantineTestnet(LocalTestnet):
    """A :class:`LocalTestnet` whose validator 0 runs the Byzantine harness."""

    def __init__(self, root: Path, behaviour: str, harness_args: tuple[str, ...] = ()) -> None:
        super().__init__(root, N)
        self.behaviour = behaviour
        self.harness_args = harness_args
        self.byzantine = -1

    def init(self) -> None:
        super().init()
        first = load_genesis(self.genesis_path).to_ledger_genesis().validators[0]
        self.byzantine = next(
            n.index
            for n in self.nodes
            if load_key_file(n.home / "node_key.json").public_key == first
        )

    def start(self, index: int) -> LocalNode:
        if index != self.byzantine:
            return super().start(index)
        node = self.nodes[index]
        node._log_file = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            [
                self.python,
                "-m",
                HARNESS,
                "--config",
                str(node.config_path),
                "--behaviour",
                self.behaviour,
                *self.harness_args,
            ],
            stdout=node._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
            start_new_session=True,
        )
        return node


class Net(_net.Net):
    """The shared client view of the testnet, plus which nodes are honest."""

    def __init__(self, testnet: ByzantineTestnet, honest: list[int]) -> None:
        super().__init__(testnet)
        self.t: ByzantineTestnet = testnet
        self.honest = honest


def start_net(root: Path, behaviour: str, harness_args: tuple[str, ...] = ()) -> Iterator[Net]:
    testnet = ByzantineTestnet(root, behaviour, harness_args)
    testnet.init()
    try:
        testnet.start_all()
        honest = [i for i in range(N) if i != testnet.byzantine]
        testnet.wait_ready(honest, timeout=120)
        yield Net(testnet, honest)
    finally:
        stop_and_report(testnet)


# --- observations ----------------------------------------------------------------------


def assert_safe(net: Net) -> int:
    """Identical chains on the honest nodes up to their common height; no tx twice."""
    top = assert_same_chain(net, net.honest)
    seen: set[str] = set()
    with httpx.Client(timeout=10) as c:
        for h in range(1, top + 1):
            for txh in c.get(f"{net.url(net.honest[0])}/v1/blocks/{h}").json()["tx_hashes"]:
                assert txh not in seen, f"tx {txh[:16]} committed twice"
                seen.add(txh)
    return top


def assert_committed_once(net: Net, txs: list[PreparedTx]) -> None:
    _net.assert_committed_once(net, [p.hash for p in txs], node=net.honest[-1])


def wait_same_tip(net: Net, timeout: float = 90) -> int:
    return _net.wait_same_tip(net, net.honest, timeout=timeout)


def submit_and_commit(net: Net, count: int, rate: float, timeout: float) -> LoadReport:
    txs = net.registrations(count, net.honest)
    urls = [net.url(i) for i in net.honest]
    report = trio.run(lambda: run_load(urls, txs, rate=rate, commit_timeout_s=timeout))
    print(f"{net.t.behaviour}: load {report.summary()}")
    assert report.accepted == count, report.summary()
    assert report.committed == count, report.summary()
    wait_same_tip(net)
    assert_committed_once(net, txs)
    return report


def describe(net: Net) -> str:
    """Height, view and view changes of every node that answers: for failure reports."""
    parts = []
    for i in range(N):
        st = net.t.nodes[i].status()
        if st is None:
            parts.append(f"node{i}: down")
            continue
        vcs = metric(net.url(i), "medledger_consensus_view_changes_total")
        parts.append(
            f"node{i}{'*' if i == net.t.byzantine else ''}: height {st['height']} "
            f"view {st['view']} view_changes {vcs:.0f} mempool {st['extra']['mempool_txs']}"
        )
    return "; ".join(parts)


def honest_log(net: Net, i: int) -> str:
    return net.t.nodes[i].log_path.read_text(errors="replace")


def byzantine_report(net: Net) -> str:
    """The harness's last ``byzantine <behaviour>: counts`` line: proof it acted."""
    text = net.t.nodes[net.t.byzantine].log_path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if f"byzantine {net.t.behaviour}:" in ln]
    assert lines, f"the Byzantine node never reported acting as {net.t.behaviour}"
    return lines[-1].split(f"byzantine {net.t.behaviour}:", 1)[1].strip()


# --- behaviours ------------------------------------------------------------------------

LOAD_TXS = 300
LOAD_RATE = 100.0
COMMIT_TIMEOUT_S = 120.0


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    behaviour, args = request.param
    yield from start_net(tmp_path / behaviour, behaviour, args)


def _param(behaviour: str, *args: str) -> Any:
    return pytest.param((behaviour, args), id=behaviour)


@pytest.mark.parametrize("net", [_param("equivocate")], indirect=True)
def test_equivocating_primary(net: Net) -> None:
    byz_key = net.orgs[net.t.byzantine].public_key
    submit_and_commit(net, LOAD_TXS, LOAD_RATE, COMMIT_TIMEOUT_S)
    top = assert_safe(net)
    views = {i: int(net.status(i)["view"]) for i in net.honest}
    evidence = {
        i: metric(net.url(i), "medledger_consensus_equivocations_total") for i in net.honest
    }
    print(f"equivocate: height {top}, views {views}, equivocations {evidence}")
    print(f"equivocate: Byzantine node {byzantine_report(net)}")
    assert all(v >= 1 for v in views.values()), "the honest nodes never left view 0"
    assert sum(evidence.values()) >= 1, "no honest node recorded the equivocation"
    for i, count in evidence.items():
        if count:
            assert f"equivocation evidence from validator {byz_key.hex()[:16]}" in honest_log(
                net, i
            )
    # The evidence itself is kept: listed by GET /v1/evidence, checkable against
    # genesis, and still there after the node restarts.
    witness = next(i for i, count in evidence.items() if count)
    listed = wait_for(
        lambda: stored_evidence(net, witness), timeout=30, what=f"node{witness} to store evidence"
    )
    assert 1 <= len(listed) <= evidence[witness]
    vs = ValidatorSet(net.chain_id, load_genesis(net.t.genesis_path).to_ledger_genesis().validators)
    for e in listed:
        assert (e["validator"], e["kind"]) == (byz_key.hex(), "PrePrepare")
        first, second = (codec.decode(bytes.fromhex(e[k]), Envelope) for k in ("first", "second"))
        assert first.payload != second.payload
        for env in (first, second):
            vs.check_envelope(env)  # both signed by the Byzantine validator
            assert (env.payload.view, env.payload.height) == (e["view"], e["height"])
    assert net.t.stop(witness) == 0
    net.t.start(witness)
    net.t.wait_ready([witness], timeout=60)
    assert stored_evidence(net, witness) == listed
    print(f"equivocate: node{witness} lists {len(listed)} evidence entries, also after a restart")


def stored_evidence(net: Net, i: int) -> list[dict[str, Any]]:
    r = httpx.get(f"{net.url(i)}/v1/evidence", params={"limit": 100}, timeout=10)
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()["evidence"]
    return entries


@pytest.mark.parametrize("net", [_param("bad-signatures")], indirect=True)
def test_invalid_signatures(net: Net) -> None:
    submit_and_commit(net, LOAD_TXS, LOAD_RATE, COMMIT_TIMEOUT_S)
    top = assert_safe(net)
    bad = {
        i: metric(net.url(i), "medledger_invalid_signatures_total", kind="consensus")
        for i in net.honest
    }
    views = {i: int(net.status(i)["view"]) for i in net.honest}
    print(f"bad-signatures: height {top}, views {views}, invalid signatures {bad}")
    print(f"bad-signatures: Byzantine node {byzantine_report(net)}")
    assert all(v >= 1 for v in views.values()), "the honest nodes never left view 0"
    assert all(n >= 1 for n in bad.values()), bad


@pytest.mark.parametrize("net", [_param("withhold")], indirect=True)
def test_withheld_votes(net: Net) -> None:
    submit_and_commit(net, LOAD_TXS, LOAD_RATE, COMMIT_TIMEOUT_S)
    top = assert_safe(net)
    views = {i: int(net.status(i)["view"]) for i in net.honest}
    peers = {i: int(net.status(i)["peers"]) for i in net.honest}
    print(f"withhold: height {top}, views {views}, peers {peers}")
    print(f"withhold: Byzantine node {byzantine_report(net)}")
    assert all(v >= 1 for v in views.values()), "the honest nodes never left view 0"
    # Silent, not gone: the honest nodes still see it connected.
    assert all(p == N - 1 for p in peers.values()), peers


@pytest.mark.parametrize("net", [_param("oversized", "--oversized-interval", "1")], indirect=True)
def test_oversized_frames(net: Net) -> None:
    def invalid_frames() -> dict[int, float]:
        return {
            i: metric(net.url(i), "medledger_p2p_messages_dropped_total", reason="invalid_frame")
            for i in net.honest
        }

    submit_and_commit(net, LOAD_TXS, LOAD_RATE, COMMIT_TIMEOUT_S)
    top = assert_safe(net)
    counts = wait_for(
        lambda: (c := invalid_frames()) and all(n >= 1 for n in c.values()) and c,
        timeout=30,
        what="every honest node to count an oversized frame",
    )
    print(f"oversized: height {top}, invalid frames {counts}")
    print(f"oversized: Byzantine node {byzantine_report(net)}")
    assert all(net.t.nodes[i].running for i in net.honest)


# --- resource bounds under a flood -----------------------------------------------------

#: Peak RSS (VmHWM) an honest node may reach during the flood: the bound SECURITY.md states.
RSS_BOUND_BYTES = 400 * 2**20
FLOOD_S = float(os.environ.get("MEDLEDGER_FLOOD_S", "10"))
FLOOD_RATE = int(os.environ.get("MEDLEDGER_FLOOD_RATE", "2000"))  # messages/s to each peer
API_CLIENTS = int(os.environ.get("MEDLEDGER_API_CLIENTS", "16"))
API_KINDS = tuple(os.environ.get("MEDLEDGER_API_KINDS", ",".join(KINDS)).split(","))
HONEST_RATE = 10.0  # tx/s of honest traffic during the flood
VALID_FLOOD_RATE = 30.0  # tx/s of valid txs among the API junk


@pytest.mark.parametrize("net", [_param("flood", "--flood-rate", str(FLOOD_RATE))], indirect=True)
def test_flood_from_a_peer_and_api_clients(net: Net) -> None:
    target = net.honest[0]
    # Honest clients of the other hospitals: their txs must commit while one
    # validator floods and the target's API is hammered.
    others = net.honest[1:]
    byz = net.t.byzantine
    honest_txs = net.registrations(int(HONEST_RATE * FLOOD_S), others)
    flood_org = net.orgs[byz]  # a fourth hospital's client app, gone bad (A2)
    valid = prepare_registrations(
        [(flood_org, 0)], net.chain_id, int(VALID_FLOOD_RATE * FLOOD_S), seed=10_000
    )
    urls = [net.url(i) for i in others]
    h0 = max(int(net.status(i)["height"]) for i in net.honest)
    drops0 = _flood_drops(net)

    async def scenario() -> tuple[LoadReport, ApiFloodReport, int]:
        async with trio.open_nursery() as nursery:
            out: dict[str, Any] = {}
            flood_done = trio.Event()

            async def flood() -> None:
                out["api"] = await api_flood(
                    net.url(target),
                    chain_id=net.chain_id,
                    clients=API_CLIENTS,
                    duration_s=FLOOD_S,
                    valid_txs=valid,
                    valid_rate=VALID_FLOOD_RATE,
                    big_body_bytes=30 * 2**20,
                    kinds=API_KINDS,
                )
                out["height_at_end"] = await trio.to_thread.run_sync(
                    lambda: min(int(net.status(i)["height"]) for i in net.honest)
                )
                flood_done.set()

            async def sample() -> None:
                t0 = trio.current_time()
                while True:
                    state = await trio.to_thread.run_sync(describe, net)
                    timeline.append(f"t={trio.current_time() - t0:5.1f}s {state}")
                    await trio.sleep(FLOOD_S / 6)

            nursery.start_soon(flood)
            nursery.start_soon(sample)
            load = await run_load(urls, honest_txs, rate=HONEST_RATE, commit_timeout_s=120)
            await flood_done.wait()  # the honest load may finish first: keep flooding to the end
            nursery.cancel_scope.cancel()
        return load, out["api"], out["height_at_end"]

    timeline: list[str] = []

    load, api, height_at_end = trio.run(scenario)
    rss = {i: _peak_rss(net, i) for i in range(N)}
    drops = {k: v - drops0.get(k, 0) for k, v in _flood_drops(net).items()}
    print(f"flood {FLOOD_S:.0f} s: Byzantine node {byzantine_report(net)}")
    print(f"flood: honest load {load.summary()}")
    print(f"flood: api {api.summary()}")
    print(f"flood: honest drops {drops}")
    print(f"flood: height {h0} -> {height_at_end} during the flood")
    print("flood: timeline\n  " + "\n  ".join(timeline))
    print(f"flood: {describe(net)}")
    print(
        "flood: peak RSS MB "
        + ", ".join(
            f"node{i}{' (byzantine)' if i == byz else ''} {v / 2**20:.0f}" for i, v in rss.items()
        )
    )
    assert all(net.t.nodes[i].running for i in net.honest)
    assert api.server_errors() == 0, api.summary()
    assert height_at_end > h0, "nothing committed while the flood ran"
    assert load.accepted == len(honest_txs), load.summary()
    assert load.committed == len(honest_txs), load.summary()
    wait_same_tip(net)
    assert_safe(net)
    assert_committed_once(net, honest_txs)
    assert drops["consensus_out_of_window"] > 0 and drops["consensus_over_cap"] > 0, drops
    for i in net.honest:
        assert rss[i] < RSS_BOUND_BYTES, f"node{i} peaked at {rss[i] / 2**20:.0f} MB"


def _flood_drops(net: Net) -> dict[str, float]:
    reasons = (
        "consensus_out_of_window",
        "consensus_over_cap",
        "consensus_input_full",
        "receive_full",
    )
    return {
        r: sum(
            metric(net.url(i), "medledger_p2p_messages_dropped_total", reason=r) for i in net.honest
        )
        for r in reasons
    }


def _peak_rss(net: Net, i: int) -> int:
    proc = net.t.nodes[i].proc
    assert proc is not None
    stats = read_proc_stats(proc.pid)
    assert stats is not None, f"node{i} is gone"
    return stats.peak_rss_bytes
