"""The benchmark's view of a testnet: its nodes, their keys, nonces and processes.

A :class:`BenchNet` wraps a :class:`~node.runner.LocalTestnet` started by the
benchmark, with the client-side facts a load needs (chain id, the hospitals'
keys and next nonces) and the process-side facts a report needs (CPU, RSS,
disk). Nonces are read back from ``GET /v1/accounts/{key}`` before each load,
so a phase that lost txs does not leave the next one with a nonce gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from ledger.keys import KeyPair
from node.keyfile import load_key_file
from node.runner import LocalTestnet, TestnetError, wait_for

from ._procfs import ProcStats, dir_bytes, read_proc_stats

__all__ = ["BenchNet", "Network", "set_block_interval"]


class Network(Protocol):
    """What a benchmark scenario needs of a network, started here or reached by URL.

    Process figures are optional: ``proc_stats`` and ``disk_bytes`` return None
    when the node's process is not on this machine, and ``pid`` raises
    :class:`~node.runner.TestnetError`.
    """

    chain_id: str

    @property
    def n(self) -> int: ...

    def url(self, i: int) -> str: ...

    def view(self) -> int: ...

    def primary_index(self) -> int: ...

    def next_nonces(self, via: int = 0) -> list[tuple[KeyPair, int]]: ...

    def wait_drained(self, nodes: Sequence[int], *, timeout: float) -> None: ...

    def pid(self, i: int) -> int: ...

    def proc_stats(self, i: int) -> ProcStats | None: ...

    def disk_bytes(self, i: int) -> int | None: ...


def set_block_interval(net: LocalTestnet, seconds: float) -> None:
    """Give every node's config ``[consensus] block_interval_s`` (a local knob).

    ``testnet init`` writes no ``[consensus]`` table, so one is appended; a
    config that already has one is left alone and reported.
    """
    for node in net.nodes:
        text = node.config_path.read_text()
        if "[consensus]" in text:
            raise TestnetError(f"{node.config_path}: already has [consensus]; edit it by hand")
        node.config_path.write_text(text + f"\n[consensus]\nblock_interval_s = {seconds!r}\n")


def wait_drained(
    status: Callable[[int], dict[str, Any]], nodes: Sequence[int], *, timeout: float
) -> None:
    """Until no listed node holds pending txs and all are at one height."""

    def drained() -> bool:
        sts = [status(i) for i in nodes]
        pending = sum(int(s.get("extra", {}).get("mempool_txs", 0)) for s in sts)
        return pending == 0 and len({int(s["height"]) for s in sts}) == 1

    wait_for(drained, timeout=timeout, interval=0.2, what="mempools to drain")


class BenchNet:
    """A running local testnet plus what clients and the report need to know."""

    def __init__(self, testnet: LocalTestnet) -> None:
        self.t = testnet
        self.orgs: list[KeyPair] = [load_key_file(n.home / "node_key.json") for n in testnet.nodes]
        st = self.status(0)
        self.chain_id = str(st["chain_id"])

    @property
    def n(self) -> int:
        return len(self.t.nodes)

    def url(self, i: int) -> str:
        return self.t.nodes[i].api_url

    def status(self, i: int) -> dict[str, Any]:
        st = self.t.nodes[i].status()
        if st is None:
            raise TestnetError(f"node{i} does not answer /v1/status")
        return st

    def height(self, i: int) -> int:
        return int(self.status(i)["height"])

    def view(self) -> int:
        """The highest PBFT view any running node reports."""
        views = [int(st["view"]) for n in self.t.running() if (st := n.status()) is not None]
        return max(views, default=0)

    def primary_index(self, among: Sequence[int] | None = None) -> int:
        """The current view's primary, as seen by the first of ``among``."""
        asked = among[0] if among else 0
        primary = bytes.fromhex(str(self.status(asked)["primary"]))
        for i, k in enumerate(self.orgs):
            if k.public_key == primary:
                return i
        raise TestnetError("the primary is not one of this testnet's validators")

    def next_nonces(self, via: int = 0) -> list[tuple[KeyPair, int]]:
        """Each hospital's key with its next nonce after the committed state."""
        out: list[tuple[KeyPair, int]] = []
        with httpx.Client(timeout=10.0) as c:
            for k in self.orgs:
                r = c.get(f"{self.url(via)}/v1/accounts/{k.public_key.hex()}")
                r.raise_for_status()
                out.append((k, int(r.json()["nonce"])))
        return out

    def wait_drained(self, nodes: Sequence[int], *, timeout: float) -> None:
        """Until no listed node holds pending txs and all are at one height."""
        wait_drained(self.status, nodes, timeout=timeout)

    def pid(self, i: int) -> int:
        proc = self.t.nodes[i].proc
        if proc is None or proc.poll() is not None:
            raise TestnetError(f"node{i} is not running")
        return proc.pid

    def proc_stats(self, i: int) -> ProcStats | None:
        proc = self.t.nodes[i].proc
        return None if proc is None else read_proc_stats(proc.pid)

    def data_dir(self, i: int) -> Path:
        return self.t.nodes[i].home / "data"

    def disk_bytes(self, i: int) -> int:
        return dir_bytes(self.data_dir(i))
