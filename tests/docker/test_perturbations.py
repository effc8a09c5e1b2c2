"""Issue 5's fault-injection suite: the compose testnet under steady load, perturbed.

As CometBFT's e2e runner does, one fault after another on the running network:
SIGKILL then start, pause then unpause, disconnect from the docker network then
reconnect (a partition), and a graceful restart, each for the current primary
and for a replica. Each fault stays in force until the other nodes have moved on
without the target (a new primary if it was the primary, then ``ADVANCE`` more
heights). After the healing, once the target's API answers again (within
``STARTUP_BOUND_S``: a restarted node first imports Python and opens its store,
which is the machine's speed, not the network's), every node must be at least
``ADVANCE`` heights above the others' tip at that moment within
``RECOVERY_BOUND_S``. At the end: identical block hashes at every height on
every node, every accepted tx committed exactly once, one state root, and
Prometheus (through its own HTTP API) sees every node up and scrapes a
``medledger_`` metric. A table of the recoveries goes to the terminal.

Load: each hospital signs its own registrations and sends them to its own node
(another one while its node is the fault's target), at ``RATE`` tx/s in all,
with at most ``WINDOW`` of its txs uncommitted (the mempool admits 64 nonces
ahead). Before a node is hit, every tx it accepted is committed first, so a
SIGKILL cannot lose a tx that only its mempool held: the suite checks the
network, not the fate of a mempool that dies with its process.

Pause: ``docker pause`` needs the cgroup freezer. Where it fails (the nested
engine this suite was written on fails now and then with "unable to freeze"),
the suite stops the node process with SIGSTOP and resumes it with SIGCONT
instead, the same fault seen from the network, and the table says which.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.keys import KeyPair
from node import compose
from node.keyfile import load_key_file
from node.load import PreparedTx, prepare_registrations

from .helpers import (
    Images,
    compose_command,
    compose_project,
    free_port_block,
    http_get,
    inspect,
    prom_query,
    prom_ready,
    prom_targets,
    run,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

N = 4
#: Offered load, tx/s over all hospitals: modest, so recovery times measure the faults,
#: not a backlog on this 2-core machine.
RATE = 50.0
#: At most this many uncommitted txs per hospital (the mempool allows 64 nonces ahead).
WINDOW = 48
#: Heights every node must gain over the healed network's tip ...
ADVANCE = 3
#: ... within this many seconds of the target's API answering again after the healing.
RECOVERY_BOUND_S = 60.0
#: How long a restarted node may take to answer at all: Python imports and opening the
#: store, which take seconds on a quiet machine and much longer on a loaded one.
STARTUP_BOUND_S = 120.0
_TICK_S = 0.1
_MAX_BATCH = 64


# -- load -------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One hospital's stream of registrations, in nonce order."""

    index: int
    key: KeyPair
    first_nonce: int
    txs: list[PreparedTx] = field(default_factory=list)
    next: int = 0  # every tx before this index was accepted (or is committed)
    committed_nonce: int = 0
    credit: float = 0.0
    cap: int | None = None  # when stopping: submit nothing at or past this index
    #: Per node: the highest index of this lane's txs that node accepted.
    top_accepted_by: dict[int, int] = field(default_factory=dict)


class SteadyLoad:
    """Registrations at a steady rate in a background thread, kept gap-free.

    A tx refused or not answered is offered again (same bytes, same nonce)
    until some node accepts it, so no hospital's nonces ever have a hole that
    would strand its later txs. ``accepted`` maps each tx hash some node
    accepted to that node.
    """

    def __init__(
        self, urls: Sequence[str], orgs: Sequence[KeyPair], chain_id: str, rate: float
    ) -> None:
        self._urls = list(urls)
        self._chain_id = chain_id
        self._lane_rate = rate / len(orgs)
        self._lock = threading.Lock()
        self._allowed = set(range(len(urls)))
        self._stop = threading.Event()
        self._finishing = threading.Event()
        self._thread = threading.Thread(target=self._main, name="steady-load", daemon=True)
        self._client = httpx.Client(timeout=5.0)  # the load thread's
        self._probe = httpx.Client(timeout=5.0)  # the test thread's
        self.accepted: dict[bytes, int] = {}
        self.rejected: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.started_at = self.finished_at = 0.0
        self.lanes = [
            _Lane(i, key, first_nonce=self._account(i, key)["nonce"]) for i, key in enumerate(orgs)
        ]
        for lane in self.lanes:
            lane.committed_nonce = lane.first_nonce

    # -- control, from the test thread --------------------------------------------------

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def exclude(self, node: int) -> None:
        with self._lock:
            self._allowed.discard(node)

    def include(self, node: int) -> None:
        with self._lock:
            self._allowed.add(node)

    def finish(self, timeout: float) -> None:
        """Offer no new txs; re-offer refused ones until each lane is gap-free; stop."""
        with self._lock:
            for lane in self.lanes:
                tops = [lane.next - 1, *lane.top_accepted_by.values()]
                lane.cap = max(tops) + 1
        self._finishing.set()
        self._thread.join(timeout)
        self.finished_at = time.monotonic()
        self.check()
        assert not self._thread.is_alive(), (
            f"load did not settle within {timeout:.0f}s: "
            + ", ".join(f"lane {x.index} at {x.next}/{x.cap}" for x in self.lanes)
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        self._client.close()
        self._probe.close()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"load thread failed: {self.error!r}") from self.error

    def committed_past(self, node: int, survivor: int) -> bool:
        """Whether every tx ``node`` accepted is committed, as ``survivor`` sees it.

        A hospital's nonces commit in order and only its own txs carry them, so
        a committed nonce past a tx's nonce proves that tx is on chain.
        """
        with self._lock:
            tops = [(lane, lane.top_accepted_by.get(node)) for lane in self.lanes]
        for lane, top in tops:
            if top is None:
                continue
            account = self._account_at(self._probe, survivor, lane.key)
            if account is None or account["nonce"] <= lane.first_nonce + top:
                return False
        return True

    def describe(self) -> str:
        """The load's state, for failure messages."""
        lanes = ", ".join(
            f"lane {x.index}: next {x.next}, committed {x.committed_nonce - x.first_nonce}"
            for x in self.lanes
        )
        alive = "running" if self._thread.is_alive() else f"stopped (error {self.error!r})"
        return f"load {alive}, {lanes}, refusals {dict(self.rejected)}"

    # -- the thread -----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            last_poll = 0.0
            last_tick = time.monotonic()
            while not self._stop.is_set():
                t0 = time.monotonic()
                if t0 - last_poll >= 0.5:
                    self._poll_committed()
                    last_poll = t0
                # Credit by the clock, not by ticks: on a loaded machine a round of
                # requests takes longer than a tick, and the rate must not sag.
                elapsed, last_tick = t0 - last_tick, t0
                for lane in self.lanes:
                    self._offer(lane, elapsed)
                if self._finishing.is_set() and all(
                    lane.cap is not None and lane.next >= lane.cap for lane in self.lanes
                ):
                    return
                self._stop.wait(max(0.0, _TICK_S - (time.monotonic() - t0)))
        except Exception as exc:  # noqa: BLE001 - kept for check(): a thread must not die silently
            self.error = exc

    def _node_for(self, lane: _Lane) -> int | None:
        with self._lock:
            allowed = sorted(self._allowed)
        if not allowed:
            return None
        home = lane.index % len(self._urls)
        return home if home in allowed else next((i for i in allowed if i > home), allowed[0])

    def _offer(self, lane: _Lane, elapsed: float) -> None:
        lane.credit = min(lane.credit + self._lane_rate * elapsed, self._lane_rate)
        stop_at = lane.cap if lane.cap is not None else lane.next + _MAX_BATCH
        room = min(lane.committed_nonce - lane.first_nonce + WINDOW, stop_at) - lane.next
        count = min(int(lane.credit), room, _MAX_BATCH)
        if self._finishing.is_set():
            count = room  # only re-offers now, at once
        if count <= 0:
            return
        node = self._node_for(lane)
        if node is None:
            return
        self._extend(lane, lane.next + count)
        chunk = lane.txs[lane.next : lane.next + count]
        lane.credit -= count
        body = {"txs": [{"tx": p.data.hex(), "blob": None} for p in chunk]}
        try:
            r = self._client.post(f"{self._urls[node]}/v1/txs/batch", json=body)
        except httpx.HTTPError:
            self.rejected["UNREACHABLE"] += count
            return
        if r.status_code != 200:
            self.rejected[f"HTTP_{r.status_code}"] += count
            return
        with self._lock:
            for offset, (p, result) in enumerate(zip(chunk, r.json()["results"], strict=True)):
                if "hash" in result:
                    self.accepted.setdefault(p.hash, node)
                    top = lane.top_accepted_by.get(node, -1)
                    lane.top_accepted_by[node] = max(top, lane.next + offset)
                else:
                    self.rejected[result["error"]["code"]] += 1
            while lane.next < len(lane.txs) and (
                lane.txs[lane.next].hash in self.accepted
                or lane.first_nonce + lane.next < lane.committed_nonce
            ):
                lane.next += 1

    def _extend(self, lane: _Lane, upto: int) -> None:
        while len(lane.txs) < upto:
            chunk = len(lane.txs) // 500
            lane.txs += prepare_registrations(
                [(lane.key, lane.first_nonce + len(lane.txs))],
                self._chain_id,
                500,
                seed=lane.index * 1_000_000 + chunk,
            )

    def _poll_committed(self) -> None:
        for lane in self.lanes:
            node = self._node_for(lane)
            account = None if node is None else self._account_at(self._client, node, lane.key)
            if account is not None:
                lane.committed_nonce = max(lane.committed_nonce, account["nonce"])

    def _account_at(self, client: httpx.Client, node: int, key: KeyPair) -> dict[str, Any] | None:
        try:
            r = client.get(f"{self._urls[node]}/v1/accounts/{key.public_key.hex()}")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body

    def _account(self, node: int, key: KeyPair) -> dict[str, Any]:
        account = self._account_at(self._probe, node, key)
        assert account is not None, f"node{node} does not know hospital {node}"
        return account


# -- the testnet ----------------------------------------------------------------------


def _status(url: str) -> dict[str, Any] | None:
    r = http_get(url + "/v1/status")
    if r is None or r.status_code != 200:
        return None
    body: dict[str, Any] = r.json()
    return body


@dataclass
class PerturbedNet:
    urls: list[str]
    prometheus: str
    containers: list[str]
    network: str
    node_ids: list[str]
    load: SteadyLoad
    rows: list[dict[str, str]] = field(default_factory=list)
    hits: Counter[int] = field(default_factory=Counter)
    #: Faults still in force (for the teardown to heal before `down`); paused: node -> how.
    paused: dict[int, str] = field(default_factory=dict)
    disconnected: set[int] = field(default_factory=set)

    def statuses(self) -> list[dict[str, Any] | None]:
        return [_status(u) for u in self.urls]

    def heights(self) -> list[int | None]:
        return [None if s is None else int(s["height"]) for s in self.statuses()]

    def primary(self) -> int:
        """The primary a quorum (2f+1) of nodes names.

        Not every node: one that missed a view change while it was cut off names
        its old view's primary until it learns of the new view, while it follows
        the chain all the same (the table's "views" column shows this).
        """
        quorum = N - (N - 1) // 3

        def agreed() -> list[str] | None:
            named = Counter(s["primary"] for s in self.statuses() if s is not None)
            best = named.most_common(1)
            return [best[0][0]] if best and best[0][1] >= quorum else None

        (primary,) = wait_for(agreed, timeout=RECOVERY_BOUND_S, what="a quorum naming a primary")
        return self.node_ids.index(primary)

    def views(self) -> str:
        return ",".join("-" if s is None else str(s["view"]) for s in self.statuses())

    def ip(self, node: int) -> str:
        nets: dict[str, Any] = inspect(self.containers[node])["NetworkSettings"]["Networks"]
        return str(nets[self.network]["IPAddress"]) if self.network in nets else "-"


def _project_network(container: str) -> str:
    nets = list(inspect(container)["NetworkSettings"]["Networks"])
    assert len(nets) == 1, nets
    return str(nets[0])


@pytest.fixture(scope="module")
def net(
    images: Images, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[PerturbedNet]:
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the node files (0600 keys) to the container's uid")
    out = tmp_path_factory.mktemp("perturbations") / "net"
    init = subprocess.run(
        [sys.executable, "-m", "node", "testnet", "init", "--docker",
         "--validators", str(N), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    base_port = free_port_block(N + 1)
    settings = replace(
        compose.ComposeSettings(validators=N),
        host_api_port_base=base_port,
        host_prometheus_port=base_port + N,
        scrape_interval_s=1,
    )
    files = compose.write_compose(out, N, settings=settings)
    urls = [f"http://127.0.0.1:{base_port + i}" for i in range(N)]
    genesis = json.loads((out / "genesis.json").read_text())
    env = {"MEDLEDGER_NODE_IMAGE": images.node, "MEDLEDGER_PROMETHEUS_IMAGE": images.prometheus}
    failed_before = request.session.testsfailed
    with compose_project(tool, files.compose, env) as cmd:
        containers = [
            run([*cmd, "ps", "-q", compose.service_name(i)]).stdout.strip() for i in range(N)
        ]
        assert all(containers), containers
        load: SteadyLoad | None = None
        t: PerturbedNet | None = None
        set_up = False
        try:

            def all_ready() -> bool:
                return all((r := http_get(u + "/ready")) is not None and r.status_code == 200
                           for u in urls)  # fmt: skip

            wait_for(all_ready, timeout=180, what=f"{N} nodes ready")
            orgs = [load_key_file(out / f"node{i}" / "node_key.json") for i in range(N)]
            node_ids = []
            for u in urls:
                st = _status(u)
                assert st is not None
                node_ids.append(str(st["node_id"]))
            load = SteadyLoad(urls, orgs, genesis["chain_id"], RATE)
            t = PerturbedNet(
                urls=urls,
                prometheus=f"http://127.0.0.1:{base_port + N}",
                containers=containers,
                network=_project_network(containers[0]),
                node_ids=node_ids,
                load=load,
            )
            load.start()
            _wait_advance(t, ADVANCE, base=0, timeout=RECOVERY_BOUND_S)
            set_up = True
            yield t
        finally:
            if load is not None:
                load.stop()
            if t is not None:
                _heal_all(t)
            if not set_up or request.session.testsfailed > failed_before:
                _print_logs(containers, out)


def _heal_all(t: PerturbedNet) -> None:
    """Undo faults a failed test left, so that `down` stops the nodes at once."""
    for i in sorted(t.paused):
        _resume(t, i)
    for i in sorted(t.disconnected):
        _reconnect(t, i)


def _print_logs(containers: Sequence[str], out: Path) -> None:
    for i, c in enumerate(containers):
        logs = run(["docker", "logs", c], check=False)
        text = logs.stdout + logs.stderr
        (out / f"node{i}.log").write_text(text)
        lines = text.splitlines()
        commits = [line for line in lines if '"committed height=' in line]
        tail = [line for line in lines if '"committed height=' not in line][-40:]
        print(f"--- node{i} ({c[:12]}): full log in {out / f'node{i}.log'} ---")
        print("\n".join([*tail, *commits[-1:]]))


# -- faults ---------------------------------------------------------------------------


def _pause(t: PerturbedNet, node: int) -> str:
    """Freeze ``node``; returns how (docker pause, or SIGSTOP where it cannot freeze)."""
    c = t.containers[node]
    done = run(["docker", "pause", c], check=False)
    mode = "docker pause"
    if done.returncode != 0:
        mode = "SIGSTOP"
        print(f"docker pause failed ({done.stderr.strip()[:160]}); using SIGSTOP")
        run(["docker", "kill", "--signal", "SIGSTOP", c])
    t.paused[node] = mode
    return mode


def _resume(t: PerturbedNet, node: int) -> None:
    c = t.containers[node]
    if t.paused.pop(node, None) == "docker pause":
        run(["docker", "unpause", c], check=False)
    else:
        run(["docker", "kill", "--signal", "SIGCONT", c], check=False)


def _disconnect(t: PerturbedNet, node: int) -> None:
    run(["docker", "network", "disconnect", t.network, t.containers[node]])
    t.disconnected.add(node)


def _reconnect(t: PerturbedNet, node: int) -> None:
    alias = compose.service_name(node)  # its host name for the other nodes and Prometheus
    run(["docker", "network", "connect", "--alias", alias, t.network, t.containers[node]])
    t.disconnected.discard(node)


def _hold(
    t: PerturbedNet, node: int, fault: str, moved_on: Callable[[], bool]
) -> tuple[float, str]:
    """Apply ``fault`` to ``node`` until the others have moved on without it, then heal.

    Returns how long the fault was in force and its label. A restart is one
    step (SIGTERM, clean exit, start) and is not held.
    """
    c = t.containers[node]
    what = f"the other nodes to move on without node{node}"
    label = fault
    start = time.monotonic()
    if fault == "restart":
        run(["docker", "restart", "--time", "30", c])
    elif fault == "kill":
        run(["docker", "kill", "--signal", "SIGKILL", c])
        wait_for(lambda: not inspect(c)["State"]["Running"], timeout=30, what=f"node{node} dead")
        try:
            wait_for(moved_on, timeout=RECOVERY_BOUND_S, what=what)
        finally:
            run(["docker", "start", c])
    elif fault == "pause":
        label = f"pause ({_pause(t, node)})"
        try:
            wait_for(moved_on, timeout=RECOVERY_BOUND_S, what=what)
        finally:
            _resume(t, node)
    elif fault == "disconnect":
        _disconnect(t, node)
        try:
            wait_for(moved_on, timeout=RECOVERY_BOUND_S, what=what)
        finally:
            _reconnect(t, node)
    else:
        raise AssertionError(f"unknown fault {fault}")
    return time.monotonic() - start, label


def _wait_advance(t: PerturbedNet, advance: int, *, base: int, timeout: float) -> list[int]:
    def every_node_past() -> list[int] | None:
        t.load.check()
        hs = t.heights()
        if any(h is None or h < base + advance for h in hs):
            return None
        return [h for h in hs if h is not None]

    return wait_for(
        every_node_past, timeout=timeout, what=f"every node at height {base + advance} or more"
    )


def _brief(status: dict[str, Any] | None) -> str:
    if status is None:
        return "down"
    return (
        f"h={status['height']} v={status['view']} peers={status['peers']} "
        f"mempool={status['extra'].get('mempool_txs')}"
    )


# -- the perturbations ----------------------------------------------------------------

PERTURBATIONS = [
    (fault, role)
    for fault in ("kill", "pause", "disconnect", "restart")
    for role in ("primary", "replica")
]


def _target(t: PerturbedNet, role: str) -> int:
    primary = t.primary()
    if role == "primary":
        return primary
    replicas = [i for i in range(N) if i != primary]
    return min(replicas, key=lambda i: (t.hits[i], i))


def _emit(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(text, flush=True)


_COLUMNS = (
    "perturbation", "target", "fault held s", "back up s", "recovered s", "heights advanced",
    "view", "views", "ip",
)  # fmt: skip


def _table(rows: Sequence[dict[str, str]]) -> str:
    widths = [max([len(c), *(len(r[c]) for r in rows)]) for c in _COLUMNS]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(r[c].ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)) for r in rows]
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("fault", "role"), PERTURBATIONS, ids=[f"{f}-{r}" for f, r in PERTURBATIONS]
)
def test_perturbation(
    net: PerturbedNet, fault: str, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    net.load.check()
    target = _target(net, role)
    net.hits[target] += 1
    others = [i for i in range(N) if i != target]
    view_before = max(int(s["view"]) for s in net.statuses() if s is not None)
    ip_before = net.ip(target)
    net.load.exclude(target)
    try:
        # Nothing only the target's mempool holds: what it accepted is on chain.
        wait_for(
            lambda: net.load.committed_past(target, others[0]),
            timeout=RECOVERY_BOUND_S,
            what=f"txs accepted by node{target} to commit",
        )
        heights_before = net.heights()
        base = max(h for i, h in enumerate(heights_before) if i in others and h is not None)

        def moved_on() -> bool:
            """The others committed ADVANCE heights (after electing a new primary if need be)."""
            every = net.statuses()
            sts = [every[i] for i in others]
            if any(s is None for s in sts):
                return False
            ok = [s for s in sts if s is not None]
            new_primary = role != "primary" or all(int(s["view"]) > view_before for s in ok)
            return new_primary and min(int(s["height"]) for s in ok) >= base + ADVANCE

        held, label = _hold(net, target, fault, moved_on)
        healed_at = time.monotonic()
        wait_for(
            lambda: _status(net.urls[target]),
            timeout=STARTUP_BOUND_S,
            what=f"node{target}'s API to answer again",
        )
        up_at = time.monotonic()
        heights_up = net.heights()
        tip = max(h for i, h in enumerate(heights_up) if i in others and h is not None)
        heights = _wait_advance(net, ADVANCE, base=tip, timeout=RECOVERY_BOUND_S)
        recovered = time.monotonic() - up_at
    except AssertionError as exc:
        now = "; ".join(f"node{i} {_brief(st)}" for i, st in enumerate(net.statuses()))
        raise AssertionError(f"{exc}\nnodes now: {now}\n{net.load.describe()}") from None
    finally:
        net.load.include(target)
    view_after = max(int(s["view"]) for s in net.statuses() if s is not None)
    ip_after = net.ip(target)
    row = {
        "perturbation": label,
        "target": f"node{target} ({role})",
        "fault held s": f"{held:.1f}",
        "back up s": f"{up_at - healed_at:.1f}",
        "recovered s": f"{recovered:.1f}",
        "heights advanced": f"{min(heights) - tip} (tip {tip} -> {min(heights)})",
        "view": f"{view_before} -> {view_after}",
        "views": net.views(),
        "ip": ip_before if ip_before == ip_after else f"{ip_before} -> {ip_after}",
    }
    net.rows.append(row)
    _emit(capsys, f"\n[perturbation] {' | '.join(row.values())}")
    net.load.check()


# -- the end state --------------------------------------------------------------------


def _get_json(client: httpx.Client, url: str) -> dict[str, Any]:
    r = client.get(url)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _chain(url: str, height: int) -> list[dict[str, Any]]:
    with httpx.Client(timeout=10.0) as client:
        return [_get_json(client, f"{url}/v1/blocks/{h}") for h in range(1, height + 1)]


def _tx_locations(urls: Sequence[str], hashes: Sequence[bytes]) -> list[dict[str, Any]]:
    """``GET /v1/txs/{hash}`` for every hash, spread over the nodes."""

    def ask(part: int) -> list[dict[str, Any]]:
        with httpx.Client(timeout=10.0) as client:
            url = urls[part % len(urls)]
            return [_get_json(client, f"{url}/v1/txs/{h.hex()}") for h in hashes[part::8]]

    with ThreadPoolExecutor(8) as pool:
        return [body for part in pool.map(ask, range(8)) for body in part]


def test_after_all_perturbations_one_chain_every_tx_once_and_prometheus_sees_all(
    net: PerturbedNet, capsys: pytest.CaptureFixture[str]
) -> None:
    net.load.finish(timeout=120)
    accepted = dict(net.load.accepted)
    span = net.load.finished_at - net.load.started_at
    _emit(
        capsys,
        f"\n[perturbations] load: {len(accepted)} txs accepted in {span:.0f}s "
        f"({len(accepted) / span:.1f} tx/s; {RATE:.0f} tx/s offered, at most {WINDOW} "
        f"uncommitted per hospital); refusals, re-offered: {dict(net.load.rejected)}",
    )

    def settled() -> list[dict[str, Any]] | None:
        sts = net.statuses()
        if any(s is None for s in sts):
            return None
        ok = [s for s in sts if s is not None]
        one_height = len({s["height"] for s in ok}) == 1
        drained = all(s["extra"].get("mempool_txs", 0) == 0 for s in ok)
        return ok if one_height and drained else None

    statuses = wait_for(settled, timeout=120, what="every node at one height, mempools empty")
    height = int(statuses[0]["height"])
    assert len({s["state_root"] for s in statuses}) == 1, "state roots differ at one height"

    with ThreadPoolExecutor(N) as pool:
        chains = list(pool.map(lambda u: _chain(u, height), net.urls))
    for h in range(height):
        at_h = {c[h]["hash"] for c in chains}
        assert len(at_h) == 1, f"nodes differ at height {h + 1}: {at_h}"
    position = {
        bytes.fromhex(x): (b["height"], i) for b in chains[0] for i, x in enumerate(b["tx_hashes"])
    }
    counts = Counter(x for b in chains[0] for x in b["tx_hashes"])
    assert max(counts.values(), default=1) == 1, "a tx is committed twice"
    missing = [h for h in accepted if h not in position]
    assert not missing, f"{len(missing)} accepted txs are not on chain, e.g. {missing[0].hex()}"

    hashes = list(accepted)
    answers = _tx_locations(net.urls, hashes)
    by_hash = {bytes.fromhex(a["hash"]): a for a in answers}
    for txh in hashes:
        a = by_hash[txh]
        assert a["status"] == "committed" and a["code"] == "OK", a
        assert (a["height"], a["index"]) == position[txh], a

    wait_for(lambda: prom_ready(net.prometheus), timeout=60, what="Prometheus ready")

    def all_up() -> list[dict[str, Any]] | None:
        targets = prom_targets(net.prometheus)
        ok = len(targets) == N and all(t["health"] == "up" for t in targets)
        return targets if ok else None

    targets = wait_for(all_up, timeout=60, what=f"Prometheus: {N} targets up")
    assert sorted(t["labels"]["instance"] for t in targets) == [
        f"{compose.service_name(i)}:{compose.CONTAINER_API_PORT}" for i in range(N)
    ]

    def scraped() -> list[dict[str, Any]] | None:
        result = prom_query(net.prometheus, "min(medledger_consensus_height)")
        return result if result and float(result[0]["value"][1]) >= height else None

    wait_for(scraped, timeout=60, what=f"Prometheus to see every node at height {height}")
    _emit(
        capsys,
        f"\n[perturbations] recovery bound {RECOVERY_BOUND_S:.0f}s, {ADVANCE} heights past the "
        f"tip at healing; final height {height}, {len(accepted)} txs committed once each\n"
        + _table(net.rows),
    )
    assert len(net.rows) == len(PERTURBATIONS), "a perturbation failed (see above)"
