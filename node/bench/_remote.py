"""The benchmark's view of a network it did not start: ``medledger bench --url``.

Only the API is certain: chain id, heights, views and mempools come from
``/v1/status``, nonces from ``/v1/accounts``. The per-node process figures
(CPU seconds, peak RSS, bytes on disk) need the node's process, which is
knowable only when the URL points at this machine: the process holding the
listening socket is found through ``/proc`` (or given with ``--pid``), and its
data directory through the ``--config`` on its command line. Where that fails
(another machine, a container, another user's process) the figures are
unknown, and the report says "n/a" rather than guess.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ledger.keys import KeyPair
from node.config import ConfigError, load_config
from node.runner import TestnetError

from ._net import wait_drained
from ._procfs import (
    ProcStats,
    cmdline,
    cwd,
    dir_bytes,
    is_local_address,
    listening_socket_inodes,
    pids_holding,
    read_proc_stats,
)

__all__ = ["NodeProcess", "RemoteNet", "find_node_process", "node_data_dir"]


@dataclass(frozen=True, slots=True)
class NodeProcess:
    """A node's local process and, when its config could be read, its data directory."""

    pid: int
    data_dir: Path | None


def _is_node_command(argv: Sequence[str]) -> bool:
    """``python -m node start ...`` or ``medledger start ...`` (not some other listener)."""
    return "start" in argv and any(
        a == "node" or a.endswith(("/medledger", "medledger")) for a in argv
    )


def node_data_dir(pid: int) -> Path | None:
    """The data directory named by the ``--config`` of a node's command line."""
    argv = cmdline(pid)
    try:
        config = argv[argv.index("--config") + 1]
    except (ValueError, IndexError):
        return None
    path = Path(config)
    if not path.is_absolute():
        base = cwd(pid)
        if base is None:
            return None
        path = base / path
    try:
        return load_config(path).node.data_dir
    except ConfigError:
        return None


def find_node_process(url: str, pid: int | None = None) -> NodeProcess | None:
    """The local node process serving ``url``, or None if it is not (knowably) here."""
    if pid is None:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        if host is None:
            return None
        try:
            ip = str(ipaddress.ip_address(host))
        except ValueError:
            try:
                ip = str(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][4][0])
            except OSError:
                return None
        if not is_local_address(ip):
            return None
        holders = pids_holding(listening_socket_inodes(ip, port))
        pids = {p for p in holders if _is_node_command(cmdline(p))}
        if len(pids) != 1:
            return None  # nobody, or ambiguous: better unknown than wrong
        pid = pids.pop()
    elif read_proc_stats(pid) is None:
        return None
    return NodeProcess(pid, node_data_dir(pid))


class RemoteNet:
    """A running network reached by URL, with the hospital keys that sign the load.

    Key ``k`` submits through ``urls[k % len(urls)]`` (as in :func:`node.load.run_load`),
    so a hospital's nonces always reach one mempool in order.
    """

    def __init__(
        self,
        urls: Sequence[str],
        keys: Sequence[KeyPair],
        *,
        pids: Sequence[int] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not urls:
            raise TestnetError("no node URL given")
        if not keys:
            raise TestnetError("no hospital key given to sign the load")
        if pids is not None and len(pids) != len(urls):
            raise TestnetError(f"{len(pids)} PIDs given for {len(urls)} URLs")
        self.urls = [u.rstrip("/") for u in urls]
        self.orgs = list(keys)
        self._client = httpx.Client(timeout=timeout_s)
        statuses = [self.status(i) for i in range(len(self.urls))]
        chains = {str(s["chain_id"]) for s in statuses}
        if len(chains) != 1:
            raise TestnetError(f"the URLs serve different chains: {sorted(chains)}")
        self.chain_id = chains.pop()
        self.validators = len(statuses[0]["validators"])
        self.node_ids = [bytes.fromhex(str(s["node_id"])) for s in statuses]
        self.procs = [
            find_node_process(u, None if pids is None else pids[i]) for i, u in enumerate(self.urls)
        ]
        for k in self.orgs:
            self._account(k, 0)  # fail early on a key the chain does not know

    def close(self) -> None:
        self._client.close()

    @property
    def n(self) -> int:
        return len(self.urls)

    @property
    def local(self) -> bool:
        """Every node's process is known here (CPU, RSS and disk can be measured)."""
        return all(p is not None for p in self.procs)

    def url(self, i: int) -> str:
        return self.urls[i]

    def status(self, i: int) -> dict[str, Any]:
        try:
            r = self._client.get(f"{self.urls[i]}/v1/status")
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise TestnetError(f"{self.urls[i]}: /v1/status: {exc}") from None
        body: dict[str, Any] = r.json()
        return body

    def height(self, i: int) -> int:
        return int(self.status(i)["height"])

    def view(self) -> int:
        return max(int(self.status(i)["view"]) for i in range(self.n))

    def primary_index(self) -> int:
        primary = bytes.fromhex(str(self.status(0)["primary"]))
        if primary not in self.node_ids:
            raise TestnetError("the primary is not among the given URLs")
        return self.node_ids.index(primary)

    def _account(self, key: KeyPair, lane: int) -> dict[str, Any]:
        url = self.urls[lane % self.n]
        try:
            r = self._client.get(f"{url}/v1/accounts/{key.public_key.hex()}")
        except httpx.HTTPError as exc:
            raise TestnetError(f"{url}: /v1/accounts: {exc}") from None
        if r.status_code == 404:
            raise TestnetError(f"key {key.public_key.hex()[:16]} is not registered on {url}")
        if r.status_code != 200:
            raise TestnetError(f"{url}: /v1/accounts answered {r.status_code}")
        body: dict[str, Any] = r.json()
        return body

    def next_nonces(self, via: int = 0) -> list[tuple[KeyPair, int]]:
        """Each key's next nonce as its own node sees it (its pending txs included).

        ``via`` is ignored: a running network may hold other clients' pending
        txs, so each key asks the node it submits through.
        """
        return [(k, int(self._account(k, lane)["next_nonce"])) for lane, k in enumerate(self.orgs)]

    def wait_drained(self, nodes: Sequence[int], *, timeout: float) -> None:
        wait_drained(self.status, nodes, timeout=timeout)

    def pid(self, i: int) -> int:
        proc = self.procs[i]
        if proc is None:
            raise TestnetError(f"{self.urls[i]}: the node's process is not known on this machine")
        return proc.pid

    def proc_stats(self, i: int) -> ProcStats | None:
        proc = self.procs[i]
        return None if proc is None else read_proc_stats(proc.pid)

    def disk_bytes(self, i: int) -> int | None:
        proc = self.procs[i]
        if proc is None or proc.data_dir is None:
            return None
        return dir_bytes(proc.data_dir)
