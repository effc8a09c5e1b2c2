"""The benchmark scenarios: a rate sweep, a catch-up, a scale series.

Each scenario starts its own testnet of real node processes
(:class:`~node.runner.LocalTestnet`), offers pre-signed open-loop load with
:func:`node.load.run_load` and measures the nodes from outside (``/proc``,
their data directories, their API). Nothing here asserts a target: the result
is figures, printed and written as JSON, that a reader compares with the
targets of issue 6.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from ledger.keys import KeyPair
from node.load import LoadReport, PreparedTx, run_load
from node.runner import LocalTestnet, TestnetError, wait_for

from ._ceiling import Ceiling, measure_ceiling, usable_cores
from ._net import BenchNet, Network, set_block_interval
from ._presign import Presigner
from ._procfs import fsync_latency_s, is_local_address
from ._profile import Profile, ProfileError, PySpy
from ._remote import RemoteNet

__all__ = [
    "BenchSettings",
    "CatchupResult",
    "PhaseResult",
    "ScaleRow",
    "SweepResult",
    "machine_info",
    "run_catchup",
    "run_scale",
    "run_sweep",
    "run_sweep_url",
    "start_testnet",
    "sweep_on",
]

#: A phase whose committed rate is below this fraction of the offered rate is saturated.
SATURATED_BELOW = 0.9
#: The sweep stops once a saturated phase commits less than this times the best rate before it.
PLATEAU_GROWTH = 1.1
#: ... for this many phases in a row.
PLATEAU_PHASES = 2

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BenchSettings:
    """Every knob of one ``medledger bench`` run (recorded in the JSON output)."""

    validators: int = 4
    rates: tuple[float, ...] = (100.0, 200.0, 400.0, 800.0, 1600.0)
    phase_seconds: float = 5.0
    #: Stop the sweep after the first saturated phase (higher rates only queue).
    stop_when_saturated: bool = True
    commit_timeout_s: float = 120.0
    ready_timeout_s: float = 120.0
    #: ``[consensus] block_interval_s`` for every node; None keeps the node default.
    block_interval_s: float | None = None
    ceiling_seconds: float = 1.0
    seed: int = 1
    profile_dir: Path | None = None
    profile_seconds: float = 10.0
    catchup_blocks: int = 10_000
    catchup_rate: float = 25.0
    scale_validators: tuple[int, ...] = (4, 7, 10, 16)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        return out


def _round(x: float, digits: int = 4) -> float | None:
    return None if math.isnan(x) else round(x, digits)


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """One offered rate: what went in, what came out, how long it took."""

    offered_rate: float
    offered: int
    accepted: int
    rejected: dict[str, int]
    committed: int
    duplicates_committed: int
    committed_tx_per_s: float
    latency_s: dict[str, float | None]
    blocks: int
    cpu_s: list[float]  # per node, during the phase
    view_changes: int = 0  # PBFT views the network moved through during the phase

    @property
    def cpu_ms_per_tx(self) -> float:
        """Mean CPU milliseconds one node spent per committed tx in this phase."""
        if self.committed == 0 or not self.cpu_s:
            return math.nan
        return sum(self.cpu_s) / len(self.cpu_s) / self.committed * 1000

    @property
    def saturated(self) -> bool:
        lost = self.committed < self.accepted or self.accepted < self.offered
        return lost or self.committed_tx_per_s < SATURATED_BELOW * self.offered_rate

    @classmethod
    def from_report(
        cls, rate: float, report: LoadReport, cpu_s: list[float], view_changes: int = 0
    ) -> PhaseResult:
        lat = {
            "p50": _round(report.percentile(50)),
            "p95": _round(report.percentile(95)),
            "p99": _round(report.percentile(99)),
            "max": _round(max(report.latencies_s, default=math.nan)),
        }
        return cls(
            offered_rate=rate,
            offered=report.offered,
            accepted=report.accepted,
            rejected=dict(sorted(report.rejected.items())),
            committed=report.committed,
            duplicates_committed=report.duplicates_committed,
            committed_tx_per_s=report.committed_per_s,
            latency_s=lat,
            blocks=max(0, report.last_height - report.first_height),
            cpu_s=cpu_s,
            view_changes=view_changes,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "offered_tx_per_s": self.offered_rate,
            "offered": self.offered,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "committed": self.committed,
            "duplicates_committed": self.duplicates_committed,
            "committed_tx_per_s": _round(self.committed_tx_per_s, 1),
            "latency_s": self.latency_s,
            "blocks": self.blocks,
            "saturated": self.saturated,
            "cpu_s_per_node": [round(c, 2) for c in self.cpu_s],
            "view_changes": self.view_changes,
            "cpu_ms_per_tx_per_node": _round(self.cpu_ms_per_tx, 3),
        }


def _mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


@dataclass(frozen=True, slots=True)
class NodeFigures:
    """One node's process figures; None where its process is not on this machine."""

    index: int
    cpu_s: float | None
    rss_bytes: int | None
    peak_rss_bytes: int | None
    disk_bytes: int | None
    #: Growth of the data directory during the run (what the committed txs cost on disk).
    disk_growth_bytes: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.index,
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 2),
            "rss_mb": _mb(self.rss_bytes),
            "peak_rss_mb": _mb(self.peak_rss_bytes),
            "disk_bytes": self.disk_bytes,
            "disk_growth_bytes": self.disk_growth_bytes,
        }


@dataclass(frozen=True, slots=True)
class SweepResult:
    """The rate sweep on one testnet, with the ceiling measured beside it."""

    validators: int
    ceiling: Ceiling
    phases: list[PhaseResult]
    nodes: list[NodeFigures]
    committed_total: int
    mean_tx_bytes: float
    wall_s: float
    profiles: dict[str, Profile] = field(default_factory=dict)
    profile_rate: float | None = None
    notes: list[str] = field(default_factory=list)
    #: "local testnet" (started by the bench) or the URLs of a running network.
    target: str = "local testnet"

    @property
    def saturation_tx_per_s(self) -> float:
        """The best committed rate of any phase (reached where the offer exceeds it)."""
        rates = [p.committed_tx_per_s for p in self.phases if not math.isnan(p.committed_tx_per_s)]
        return max(rates, default=math.nan)

    @property
    def saturated(self) -> bool:
        return any(p.saturated for p in self.phases)

    @property
    def bytes_per_committed_tx(self) -> float:
        """Mean growth of a node's data directory per tx committed during the run."""
        growth = [n.disk_growth_bytes for n in self.nodes]
        if self.committed_total == 0 or not growth or None in growth:
            return math.nan
        return sum(g for g in growth if g is not None) / len(growth) / self.committed_total

    def to_json(self) -> dict[str, object]:
        ceiling = self.ceiling.tx_per_s
        return {
            "target": self.target,
            "validators": self.validators,
            "saturation": {
                "committed_tx_per_s": _round(self.saturation_tx_per_s, 1),
                "reached": self.saturated,
            },
            "ceiling": {
                "verifications_per_s_per_core": round(self.ceiling.verifications_per_s_per_core),
                "cores": self.ceiling.cores,
                "validators": self.ceiling.validators,
                "tx_per_s": round(ceiling, 1),
                "achieved_ratio": _round(self.saturation_tx_per_s / ceiling, 4),
            },
            "phases": [p.to_json() for p in self.phases],
            "nodes": [n.to_json() for n in self.nodes],
            "committed_total": self.committed_total,
            "mean_tx_bytes": round(self.mean_tx_bytes, 1),
            "bytes_per_committed_tx": _round(self.bytes_per_committed_tx, 1),
            "wall_s": round(self.wall_s, 1),
            "profile": (
                None
                if not self.profiles
                else {
                    "offered_tx_per_s": self.profile_rate,
                    "nodes": {k: v.to_json() for k, v in self.profiles.items()},
                }
            ),
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class CatchupResult:
    validators: int
    node: int
    behind_blocks: int
    behind_txs: int
    lag_build_s: float
    startup_s: float
    catchup_s: float
    #: CPU seconds of each node while the stopped one caught up (NaN: not measured).
    cpu_s: list[float] = field(default_factory=list)
    profile: Profile | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def blocks_per_s(self) -> float:
        return self.behind_blocks / self.catchup_s if self.catchup_s > 0 else math.nan

    @property
    def tx_per_s(self) -> float:
        return self.behind_txs / self.catchup_s if self.catchup_s > 0 else math.nan

    @property
    def network_blocks_per_s(self) -> float:
        """The others' commit rate while the lag was built (the rate to beat)."""
        return self.behind_blocks / self.lag_build_s if self.lag_build_s > 0 else math.nan

    def to_json(self) -> dict[str, object]:
        return {
            "validators": self.validators,
            "node": self.node,
            "behind_blocks": self.behind_blocks,
            "behind_txs": self.behind_txs,
            "lag_build_s": round(self.lag_build_s, 1),
            "startup_s": round(self.startup_s, 2),
            "catchup_s": round(self.catchup_s, 2),
            "blocks_per_s": _round(self.blocks_per_s, 1),
            "tx_per_s": _round(self.tx_per_s, 1),
            "network_blocks_per_s_while_behind": _round(self.network_blocks_per_s, 2),
            "cpu_s_per_node": [_round(c, 2) for c in self.cpu_s],
            "profile": None if self.profile is None else self.profile.to_json(),
            "notes": self.notes,
        }


@dataclass(frozen=True, slots=True)
class ScaleRow:
    validators: int
    sweep: SweepResult | None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        if self.sweep is None:
            return {"validators": self.validators, "error": self.error}
        s = self.sweep
        first = s.phases[0] if s.phases else None
        return {
            "validators": self.validators,
            "saturation_tx_per_s": _round(s.saturation_tx_per_s, 1),
            "ceiling_tx_per_s": round(s.ceiling.tx_per_s, 1),
            "lowest_rate": None if first is None else first.offered_rate,
            "latency_s_at_lowest_rate": None if first is None else first.latency_s,
            "mean_peak_rss_mb": _mb(mean_peak_rss(s)),
            "bytes_per_committed_tx": _round(s.bytes_per_committed_tx, 1),
        }


def mean_peak_rss(s: SweepResult) -> int | None:
    """Mean peak RSS of the nodes in bytes, None if any node's is unknown."""
    peaks = [n.peak_rss_bytes for n in s.nodes]
    if not peaks or None in peaks:
        return None
    return sum(p for p in peaks if p is not None) // len(peaks)


def machine_info(work_dir: Path | None = None) -> dict[str, object]:
    """What the figures were measured on (load average and fsync time matter on a shared box)."""
    load1, load5, load15 = os.getloadavg()
    fsync = None if work_dir is None else round(fsync_latency_s(work_dir) * 1000, 2)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": usable_cores(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "fsync_4k_median_ms": fsync,
    }


# --- testnets ------------------------------------------------------------------------


def start_testnet(root: Path, validators: int, settings: BenchSettings, log: Log) -> LocalTestnet:
    """Init and start a testnet under ``root``; the caller closes it (context manager)."""
    net = LocalTestnet(root, validators)
    net.init()
    if settings.block_interval_s is not None:
        set_block_interval(net, settings.block_interval_s)
    log(f"starting {validators} validators under {root}")
    net.start_all()
    try:
        net.wait_ready(timeout=settings.ready_timeout_s)
    except BaseException:
        net.stop_all(timeout=15.0)
        raise
    return net


def _cpu(net: Network, nodes: Sequence[int]) -> list[float]:
    """CPU seconds used so far by each node's process (NaN where it is not known here)."""
    out = []
    for i in nodes:
        st = net.proc_stats(i)
        out.append(st.cpu_s if st is not None else math.nan)
    return out


def _load(
    net: Network,
    signer: Presigner,
    nodes: Sequence[int],
    rate: float,
    count: int,
    seed: int,
    commit_timeout_s: float,
) -> tuple[LoadReport, list[PreparedTx]]:
    """Sign ``count`` registrations off the clock, then offer them at ``rate``."""
    orgs = net.next_nonces(via=nodes[0])
    txs = signer.registrations(orgs, net.chain_id, count, seed=seed)
    urls = [net.url(i) for i in nodes]
    report = trio.run(lambda: run_load(urls, txs, rate=rate, commit_timeout_s=commit_timeout_s))
    return report, txs


def _phase_count(rate: float, seconds: float) -> int:
    return max(1, round(rate * seconds))


def _measure_ceiling(validators: int, settings: BenchSettings, log: Log) -> Ceiling:
    log(f"measuring the verification ceiling ({settings.ceiling_seconds:.1f}s, one core)")
    ceiling = measure_ceiling(validators, seconds=settings.ceiling_seconds)
    log(
        f"ceiling: {ceiling.verifications_per_s_per_core:,.0f} verifications/s/core x "
        f"{ceiling.cores} cores / {validators} validators = {ceiling.tx_per_s:,.0f} tx/s"
    )
    return ceiling


def run_sweep(
    root: Path,
    settings: BenchSettings,
    log: Log,
    *,
    validators: int | None = None,
    profile: bool = True,
) -> SweepResult:
    """Offer each rate of ``settings.rates`` in turn on a fresh testnet."""
    n = validators or settings.validators
    ceiling = _measure_ceiling(n, settings, log)
    with (
        Presigner(usable_cores()) as signer,
        start_testnet(root, n, settings, log) as testnet,
    ):
        return sweep_on(BenchNet(testnet), signer, ceiling, settings, log, profile=profile)


def run_sweep_url(
    urls: Sequence[str],
    keys: Sequence[KeyPair],
    settings: BenchSettings,
    log: Log,
    *,
    pids: Sequence[int] | None = None,
) -> SweepResult:
    """The same sweep against a network that is already running, reached by ``urls``."""
    net = RemoteNet(urls, keys, pids=pids)
    try:
        known = sum(p is not None for p in net.procs)
        log(
            f"{net.n} node URLs on chain {net.chain_id!r} ({net.validators} validators); "
            f"{known} of their processes found on this machine"
        )
        ceiling = _measure_ceiling(net.validators, settings, log)
        with Presigner(usable_cores()) as signer:
            result = sweep_on(net, signer, ceiling, settings, log, target=",".join(net.urls))
    finally:
        net.close()
    if not net.local:
        result.notes.append(
            "CPU, RSS and disk are n/a for nodes whose process is not on this machine "
            "(give --pid for a local node that was not found)"
        )
    if not all(is_local_url(u) for u in urls):
        result.notes.append("the ceiling was measured on the bench's machine, not on the nodes'")
    if net.n < net.validators:
        result.notes.append(
            f"load went to {net.n} of {net.validators} validators; figures per node "
            "cover those only"
        )
    return result


def is_local_url(url: str) -> bool:
    host = urlsplit(url).hostname
    if host is None:
        return False
    try:
        return is_local_address(str(socket.getaddrinfo(host, None)[0][4][0]))
    except (OSError, ValueError):
        return False


def sweep_on(
    net: Network,
    signer: Presigner,
    ceiling: Ceiling,
    settings: BenchSettings,
    log: Log,
    *,
    profile: bool = True,
    target: str = "local testnet",
) -> SweepResult:
    """Offer each rate of ``settings.rates`` in turn to ``net``; measure what it commits."""
    n = ceiling.validators
    started = time.monotonic()
    phases: list[PhaseResult] = []
    notes: list[str] = []
    committed_total = 0
    tx_bytes = 0
    tx_count = 0
    profiles: dict[str, Profile] = {}
    profile_rate: float | None = None
    all_nodes = list(range(net.n))
    disk_before = [net.disk_bytes(i) for i in all_nodes]
    for k, rate in enumerate(settings.rates):
        count = _phase_count(rate, settings.phase_seconds)
        before = _cpu(net, all_nodes)
        view_before = net.view()
        log(f"phase {k + 1}: {count} txs offered at {rate:g} tx/s")
        report, txs = _load(
            net,
            signer,
            all_nodes,
            rate,
            count,
            settings.seed * 1000 + k,
            settings.commit_timeout_s,
        )
        after = _cpu(net, all_nodes)
        phase = PhaseResult.from_report(
            rate,
            report,
            [a - b for a, b in zip(after, before, strict=True)],
            net.view() - view_before,
        )
        phases.append(phase)
        committed_total += report.committed
        tx_bytes += sum(len(p.data) for p in txs)
        tx_count += len(txs)
        log(
            f"  committed {phase.committed}/{phase.accepted} accepted at "
            f"{phase.committed_tx_per_s:,.1f} tx/s; p50 {phase.latency_s['p50']}s "
            f"p99 {phase.latency_s['p99']}s; {phase.view_changes} view changes"
        )
        if phase.committed < phase.accepted or phase.accepted < phase.offered:
            notes.append(
                f"phase at {rate:g} tx/s: {phase.offered - phase.accepted} rejected "
                f"{phase.rejected}, {phase.accepted - phase.committed} accepted but not "
                f"committed within {settings.commit_timeout_s:g}s"
            )
        try:
            net.wait_drained(all_nodes, timeout=settings.commit_timeout_s)
        except TestnetError as exc:
            notes.append(f"after the {rate:g} tx/s phase: {exc}; sweep stopped")
            break
        if settings.stop_when_saturated and _plateau(phases):
            if k + 1 < len(settings.rates):
                notes.append(
                    f"committed rate stopped growing at {rate:g} tx/s offered; higher rates skipped"
                )
            break
    if profile and settings.profile_dir is not None and phases:
        profile_rate = _saturating_rate(phases)
        profiles, committed, nbytes, ntx = _profile_phase(
            net, signer, settings, profile_rate, log, notes
        )
        committed_total += committed
        tx_bytes += nbytes
        tx_count += ntx
    nodes = _node_figures(net, all_nodes, disk_before)
    return SweepResult(
        validators=n,
        ceiling=ceiling,
        phases=phases,
        nodes=nodes,
        committed_total=committed_total,
        mean_tx_bytes=tx_bytes / tx_count if tx_count else math.nan,
        wall_s=time.monotonic() - started,
        profiles=profiles,
        profile_rate=profile_rate,
        notes=notes,
        target=target,
    )


def _or_zero(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _saturating_rate(phases: Sequence[PhaseResult]) -> float:
    """The lowest offered rate, at or above the best phase's, that the network fell behind."""
    best = max(phases, key=lambda p: _or_zero(p.committed_tx_per_s))
    behind = [p.offered_rate for p in phases if p.saturated and p.offered_rate >= best.offered_rate]
    return min(behind, default=2 * best.offered_rate)


def _plateau(phases: Sequence[PhaseResult]) -> bool:
    """Offering more has stopped committing more.

    A phase can fall behind its offer and still be latency-bound rather than
    saturated (a higher offer fills bigger blocks and commits more), and on a
    shared machine one phase can be unlucky, so the sweep stops only when the
    last phase lost txs, or when the last ``PLATEAU_PHASES`` phases were all
    behind their offer and none beat the best earlier rate by ``PLATEAU_GROWTH``.
    """
    last = phases[-1]
    if last.committed < last.accepted or last.accepted < last.offered:
        return True  # losing txs: offering more measures nothing new
    if len(phases) <= PLATEAU_PHASES:
        return False
    recent = phases[-PLATEAU_PHASES:]
    if not all(p.saturated for p in recent):
        return False
    best_before = max(_or_zero(p.committed_tx_per_s) for p in phases[:-PLATEAU_PHASES])
    return all(_or_zero(p.committed_tx_per_s) < PLATEAU_GROWTH * best_before for p in recent)


def _node_figures(
    net: Network, nodes: Sequence[int], disk_before: Sequence[int | None]
) -> list[NodeFigures]:
    out = []
    for i, before in zip(nodes, disk_before, strict=True):
        st = net.proc_stats(i)
        disk = net.disk_bytes(i)
        out.append(
            NodeFigures(
                i,
                None if st is None else st.cpu_s,
                None if st is None else st.rss_bytes,
                None if st is None else st.peak_rss_bytes,
                disk,
                None if disk is None or before is None else disk - before,
            )
        )
    return out


def _profile_phase(
    net: Network,
    signer: Presigner,
    settings: BenchSettings,
    rate: float,
    log: Log,
    notes: list[str],
) -> tuple[dict[str, Profile], int, int, int]:
    """One more phase at ``rate`` with py-spy on the primary and one replica.

    A separate phase, so the sweep's figures are not perturbed by sampling.
    """
    assert settings.profile_dir is not None
    settings.profile_dir.mkdir(parents=True, exist_ok=True)
    all_nodes = list(range(net.n))
    try:
        primary = net.primary_index()
        replica = next(i for i in all_nodes if i != primary)
        pids = {i: net.pid(i) for i in (primary, replica)}
    except (TestnetError, StopIteration) as exc:
        notes.append(f"no profile: {exc or 'one node only'}")
        return {}, 0, 0, 0
    count = _phase_count(rate, settings.profile_seconds)
    orgs = net.next_nonces()
    txs = signer.registrations(orgs, net.chain_id, count, seed=settings.seed * 1000 + 999)
    urls = [net.url(i) for i in all_nodes]
    log(f"profiling node{primary} (primary) and node{replica} at {rate:g} tx/s")
    spies: dict[str, PySpy] = {}
    try:
        for role, i in (("primary", primary), ("replica", replica)):
            out = settings.profile_dir / f"node{i}-{role}.folded"
            spies[f"node{i} ({role})"] = PySpy(pids[i], out, settings.profile_seconds)
        cpu_before = _cpu(net, [primary, replica])
        t0 = time.monotonic()
        report = trio.run(
            lambda: run_load(urls, txs, rate=rate, commit_timeout_s=settings.commit_timeout_s)
        )
        wall = time.monotonic() - t0
        cpu_after = _cpu(net, [primary, replica])
        profiles: dict[str, Profile] = {}
        for k, (name, spy) in enumerate(spies.items()):
            try:
                prof = spy.result()
            except ProfileError as exc:
                notes.append(f"profile of {name}: {exc}")
                continue
            used = cpu_after[k] - cpu_before[k]
            profiles[name] = dataclasses.replace(prof, cpu_fraction=used / wall)
    except ProfileError as exc:
        notes.append(f"no profile: {exc}")
        return {}, 0, 0, 0
    finally:
        for spy in spies.values():
            spy.stop()
    try:
        net.wait_drained(all_nodes, timeout=settings.commit_timeout_s)
    except TestnetError as exc:
        notes.append(f"after the profile phase: {exc}")
    return profiles, report.committed, sum(len(p.data) for p in txs), len(txs)


# --- catch-up ------------------------------------------------------------------------


def run_catchup(
    root: Path, settings: BenchSettings, log: Log, *, blocks: int | None = None
) -> CatchupResult:
    """Stop one replica, let the others commit ``blocks`` blocks, restart it, time it."""
    n = settings.validators
    target_blocks = blocks if blocks is not None else settings.catchup_blocks
    all_nodes = list(range(n))
    notes: list[str] = []
    profile: Profile | None = None
    with (
        Presigner(usable_cores()) as signer,
        start_testnet(root, n, settings, log) as testnet,
    ):
        net = BenchNet(testnet)
        primary = net.primary_index()
        victim = max(i for i in all_nodes if i != primary)
        others = [i for i in all_nodes if i != victim]
        net.wait_drained(all_nodes, timeout=settings.commit_timeout_s)
        victim_height = net.height(victim)
        log(
            f"stopping node{victim} at height {victim_height}; the others commit "
            f"{target_blocks} blocks"
        )
        testnet.stop(victim)
        start_height = net.height(others[0])
        goal = start_height + target_blocks
        behind_txs = 0
        t0 = time.monotonic()
        seed = settings.seed * 1000 + 500
        chunk = _phase_count(settings.catchup_rate, 5.0)
        while net.height(others[0]) < goal:
            report, _ = _load(
                net, signer, others, settings.catchup_rate, chunk, seed, settings.commit_timeout_s
            )
            seed += 1
            behind_txs += report.committed
            log(f"  height {net.height(others[0])}/{goal}")
        net.wait_drained(others, timeout=settings.commit_timeout_s)
        lag_build_s = time.monotonic() - t0
        top = net.height(others[0])
        log(f"restarting node{victim} ({top - victim_height} blocks behind)")
        started = time.monotonic()
        testnet.start(victim)
        node = testnet.nodes[victim]
        wait_for(
            lambda: node.status() is not None,
            timeout=settings.ready_timeout_s,
            interval=0.02,
            what=f"node{victim} to answer",
        )
        answered = time.monotonic()
        spy = _catchup_spy(net, victim, settings, top - victim_height, notes)
        cpu_before = _cpu(net, all_nodes)

        def caught_up() -> bool:
            st = node.status()
            return st is not None and int(st["height"]) >= top

        try:
            wait_for(
                caught_up,
                timeout=max(600.0, target_blocks / 5),
                interval=0.05,
                what=f"node{victim} to reach height {top}",
            )
            done = time.monotonic()
            cpu_after = _cpu(net, all_nodes)
            if spy is not None:
                try:
                    prof = spy.finish()
                    profile = dataclasses.replace(
                        prof,
                        cpu_fraction=(cpu_after[victim] - cpu_before[victim]) / (done - answered),
                    )
                except ProfileError as exc:
                    notes.append(f"profile of the catching-up node: {exc}")
        finally:
            if spy is not None:
                spy.stop()
    return CatchupResult(
        validators=n,
        node=victim,
        behind_blocks=top - victim_height,
        behind_txs=behind_txs,
        lag_build_s=lag_build_s,
        startup_s=answered - started,
        catchup_s=done - answered,
        cpu_s=[a - b for a, b in zip(cpu_after, cpu_before, strict=True)],
        profile=profile,
        notes=notes,
    )


def _catchup_spy(
    net: Network, victim: int, settings: BenchSettings, behind: int, notes: list[str]
) -> PySpy | None:
    """py-spy on the catching-up node until it has caught up (``--profile``)."""
    if settings.profile_dir is None:
        return None
    settings.profile_dir.mkdir(parents=True, exist_ok=True)
    out = settings.profile_dir / f"node{victim}-catchup-{behind}.folded"
    try:
        return PySpy(net.pid(victim), out, max(settings.profile_seconds, 3600.0))
    except (ProfileError, TestnetError) as exc:
        notes.append(f"no profile of the catching-up node: {exc}")
        return None


# --- scale ---------------------------------------------------------------------------


def run_scale(root: Path, settings: BenchSettings, log: Log) -> list[ScaleRow]:
    """The sweep at each size of ``settings.scale_validators``, one fresh testnet each."""
    rows: list[ScaleRow] = []
    for n in settings.scale_validators:
        log(f"scale: {n} validators")
        try:
            sweep = run_sweep(root / f"scale-{n}", settings, log, validators=n, profile=False)
        except TestnetError as exc:
            rows.append(ScaleRow(n, None, str(exc)))
            continue
        rows.append(ScaleRow(n, sweep))
    return rows


def bench_command_line() -> list[str]:
    return ["medledger", *sys.argv[1:]]


def jsonable(value: Any) -> Any:
    """NaN is not JSON: the report writes null instead."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
