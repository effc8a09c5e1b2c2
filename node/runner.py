"""A testnet of validators run as local processes.

One class serves the operator's ``medledger testnet up`` and the multi-process
tests, so the tests exercise exactly what operators run: real ``medledger
start`` processes, each with its own config, keys and LevelDB, talking libp2p
over loopback. Fault methods (kill, pause, restart) are the perturbations the
tests apply.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


class TestnetError(Exception):
    """A node did not start, stop or become ready as expected."""

    __test__ = False  # not a pytest test class


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value or ``timeout`` passes.

    Waiting on an observable condition with a deadline is how every test and
    tool here waits; a fixed sleep would be either flaky or slow.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TestnetError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class LocalNode:
    """One validator process and the files that define it."""

    index: int
    home: Path
    config_path: Path
    api_url: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: Any = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> httpx.Response:
        return httpx.get(self.api_url + path, timeout=timeout)

    def status(self) -> dict[str, Any] | None:
        """The node's /v1/status, or None while it does not answer."""
        try:
            r = self.get("/v1/status")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body

    def is_ready(self) -> bool:
        try:
            return self.get("/ready").status_code == 200
        except httpx.HTTPError:
            return False


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (Linux: 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _free_port_range(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free right now, at a random base.

    Below the ephemeral range: a node restarted by a test must get its port
    back, and a port in that range can meanwhile be the local end of any
    outgoing connection on the machine (a peer's dial, an HTTP client), which
    made restarts fail with "address already in use".
    """
    rng = random.Random()  # only picks where to look; not part of any test's outcome
    top = min(_ephemeral_low(), 60_000) - count
    for _ in range(200):
        base = rng.randrange(10_000, max(10_001, top))
        if all(_port_free(base + i) for i in range(count)):
            return base
    raise TestnetError(f"no {count} consecutive free ports found")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _api_url(config_path: Path) -> str:
    with config_path.open("rb") as f:
        cfg = tomllib.load(f)
    listen = cfg.get("api", {}).get("listen", "127.0.0.1:26657")
    host, _, port = str(listen).rpartition(":")
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


class LocalTestnet:
    """N validators as child processes of this one, with files under ``root``."""

    def __init__(
        self,
        root: Path,
        validators: int = 4,
        *,
        python: str = sys.executable,
        extra_init_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.validators = validators
        self.python = python
        self.extra_init_args = list(extra_init_args)
        self.env = {**os.environ, **(env or {})}
        self.nodes: list[LocalNode] = []

    # -- files ---------------------------------------------------------------

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    def init(self) -> None:
        """Write genesis, keys and configs unless they already exist."""
        if not self.genesis_path.exists():
            extra = list(self.extra_init_args)
            if "--base-port" not in extra:
                # Several testnets may be initialised before any binds its ports:
                # start each at a port range of its own rather than at the default.
                extra += ["--base-port", str(_free_port_range(2 * self.validators))]
            cmd = [
                self.python, "-m", "node", "testnet", "init",
                "--validators", str(self.validators), "--out", str(self.root),
                *extra,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
            if done.returncode != 0:
                raise TestnetError(f"testnet init failed: {done.stderr.strip()}")
        homes = sorted(
            (p for p in self.root.glob("node*") if (p / "config.toml").exists()),
            key=lambda p: int(p.name.removeprefix("node")),
        )
        if len(homes) < self.validators:
            raise TestnetError(
                f"{self.root} holds {len(homes)} node configs, expected {self.validators}"
            )
        self.nodes = [
            LocalNode(
                index=i,
                home=home,
                config_path=home / "config.toml",
                api_url=_api_url(home / "config.toml"),
                log_path=home / "node.log",
            )
            for i, home in enumerate(homes[: self.validators])
        ]

    # -- processes -----------------------------------------------------------

    def start(self, index: int) -> LocalNode:
        node = self.nodes[index]
        if node.running:
            raise TestnetError(f"node{index} is already running")
        node._log_file = node.log_path.open("ab")
        node.proc = subprocess.Popen(
            [self.python, "-m", "node", "start", "--config", str(node.config_path)],
            stdout=node._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # a Ctrl-C at the terminal reaches us, not each node
        )
        return node

    def start_all(self) -> None:
        for i in range(len(self.nodes)):
            self.start(i)

    def signal(self, index: int, sig: signal.Signals) -> None:
        node = self.nodes[index]
        if node.proc is None or node.proc.poll() is not None:
            raise TestnetError(f"node{index} is not running")
        node.proc.send_signal(sig)

    def stop(self, index: int, *, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit code of a clean shutdown is 0."""
        node = self.nodes[index]
        if node.proc is None:
            return 0
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGCONT)  # a paused node cannot handle SIGTERM
            node.proc.terminate()
        try:
            code = node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
            raise TestnetError(f"node{index} ignored SIGTERM for {timeout:.0f}s") from None
        self._close_log(node)
        return code

    def kill(self, index: int) -> None:
        """SIGKILL: the crash fault."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        self._close_log(node)

    def pause(self, index: int) -> None:
        self.signal(index, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        self.signal(index, signal.SIGCONT)

    def restart(self, index: int) -> LocalNode:
        self.stop(index)
        return self.start(index)

    def stop_all(self, *, timeout: float = 30.0) -> dict[int, int]:
        codes: dict[int, int] = {}
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                codes[node.index] = node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                codes[node.index] = node.proc.wait()
            self._close_log(node)
        return codes

    @staticmethod
    def _close_log(node: LocalNode) -> None:
        if node._log_file is not None:
            node._log_file.close()
            node._log_file = None

    # -- observation -----------------------------------------------------------

    def running(self) -> Iterator[LocalNode]:
        return (n for n in self.nodes if n.running)

    def _select(self, indices: Sequence[int] | None) -> list[LocalNode]:
        if indices is None:
            return list(self.nodes)
        return [self.nodes[i] for i in indices]

    def wait_ready(self, indices: Sequence[int] | None = None, *, timeout: float = 60.0) -> None:
        wanted = self._select(indices)

        def all_ready() -> bool:
            for n in wanted:
                if n.proc is not None and n.proc.poll() is not None:
                    raise TestnetError(
                        f"node{n.index} exited with {n.proc.returncode}; see {n.log_path}"
                    )
            return all(n.is_ready() for n in wanted)

        wait_for(all_ready, timeout=timeout, what=f"{len(wanted)} nodes to be ready")

    def wait_height(
        self, height: int, indices: Sequence[int] | None = None, *, timeout: float = 60.0
    ) -> None:
        wanted = self._select(indices)

        def reached() -> bool:
            for n in wanted:
                st = n.status()
                if st is None or int(st["height"]) < height:
                    return False
            return True

        wait_for(reached, timeout=timeout, what=f"height {height} on {len(wanted)} nodes")

    def __enter__(self) -> LocalTestnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all(timeout=15.0)
