"""What the multi-process suites share about a running :class:`~node.runner.LocalTestnet`.

:class:`Net` is the client's view of a testnet of real node processes: each
node's API, the hospitals' keys with their next nonces, and the checks every
such suite makes after a fault or a load (one chain, one tip, every tx
committed once). Used by ``tests/multiprocess/test_testnet.py`` and
``tests/hardening/test_byzantine.py``. Every wait is a condition with a
deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ledger.keys import KeyPair
from node.genesis_file import load_genesis
from node.keyfile import load_key_file
from node.load import PreparedTx, prepare_registrations
from node.runner import LocalTestnet, wait_for


class Net:
    """A running testnet plus the client-side bookkeeping of nonces."""

    def __init__(self, testnet: LocalTestnet) -> None:
        self.t = testnet
        self.orgs: list[KeyPair] = [load_key_file(n.home / "node_key.json") for n in testnet.nodes]
        self.nonces = {k.public_key: 0 for k in self.orgs}
        self.chain_id = load_genesis(testnet.genesis_path).chain_id
        self.seed = 0

    def url(self, i: int) -> str:
        return self.t.nodes[i].api_url

    def status(self, i: int) -> dict[str, Any]:
        st = self.t.nodes[i].status()
        assert st is not None, f"node{i} does not answer"
        return st

    def heights(self, nodes: Sequence[int] | None = None) -> list[int]:
        return [int(self.status(i)["height"]) for i in self._all(nodes)]

    def registrations(
        self, count: int, org_indices: Sequence[int] | None = None
    ) -> list[PreparedTx]:
        """``count`` txs signed by the hospitals ``org_indices``, lane k by the k-th of them."""
        chosen = [self.orgs[i] for i in self._all(org_indices)]
        txs = prepare_registrations(
            [(k, self.nonces[k.public_key]) for k in chosen], self.chain_id, count, seed=self.seed
        )
        self.seed += 1
        for i in range(count):
            self.nonces[chosen[i % len(chosen)].public_key] += 1
        return txs

    def block_hashes(self, i: int, upto: int) -> list[str]:
        with httpx.Client(timeout=10) as c:
            return [
                c.get(f"{self.url(i)}/v1/blocks/{h}").json()["hash"] for h in range(1, upto + 1)
            ]

    def _all(self, nodes: Sequence[int] | None) -> Sequence[int]:
        return range(len(self.t.nodes)) if nodes is None else nodes


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def assert_same_chain(net: Net, nodes: Sequence[int]) -> int:
    """Identical block hashes at every common height; returns that height."""
    top = min(net.heights(nodes))
    chains = {i: net.block_hashes(i, top) for i in nodes}
    first = chains[nodes[0]]
    for i in nodes[1:]:
        assert chains[i] == first, f"node{i} diverges from node{nodes[0]}"
    return top


def wait_same_tip(net: Net, nodes: Sequence[int], timeout: float = 60) -> int:
    """Wait until ``nodes`` stand at one height with one state root; returns the height."""

    def same() -> int | None:
        sts = [net.status(i) for i in nodes]
        heights = {int(s["height"]) for s in sts}
        roots = {s["state_root"] for s in sts}
        return heights.pop() if len(heights) == 1 and len(roots) == 1 else None

    return wait_for(same, timeout=timeout, what=f"nodes {list(nodes)} at one height and root")


def assert_committed_once(net: Net, hashes: Sequence[bytes], node: int) -> None:
    """Every hash committed, and each at its own (height, index), as ``node`` sees it."""
    locations = set()
    with httpx.Client(timeout=10) as c:
        for h in hashes:
            body = c.get(f"{net.url(node)}/v1/txs/{h.hex()}").json()
            assert body["status"] == "committed", f"tx {h.hex()[:16]} is {body['status']}"
            locations.add((body["height"], body["index"]))
    assert len(locations) == len(hashes)


def stop_and_report(testnet: LocalTestnet) -> None:
    """Stop every node; print the log tail of each that did not exit 0."""
    codes = testnet.stop_all(timeout=30)
    for node in testnet.nodes:
        if codes.get(node.index, 0) != 0:
            print(f"--- node{node.index} log (exit {codes[node.index]}) ---")
            print(node.log_path.read_text(errors="replace")[-4000:])
