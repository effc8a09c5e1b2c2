"""The Trio service around the core: effects performed in order, on MockClock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from consensus import service as service_module
from consensus.core import CommitBlock, Effect, Replica
from consensus.messages import CommitCertificate
from consensus.service import ConsensusService
from consensus.testing import CHAIN_ID, ToyApp, ToyStorage, genesis_digest, sim_config
from consensus.validators import ValidatorSet
from consensus.wal import FileWAL
from ledger.hashing import sha256
from ledger.keys import KeyPair

from .helpers import block, tx

N = 4
KEYS = [KeyPair.from_seed(sha256(b"svc:%d" % i)) for i in range(N)]
VS = ValidatorSet(CHAIN_ID, [k.public_key for k in KEYS])


class FakeTransport:
    """Delivers straight into the peers' input channels; ``down`` peers get nothing."""

    def __init__(self, me: bytes, services: dict[bytes, ConsensusService], down: set[bytes]):
        self.me, self.services, self.down = me, services, down

    async def send_to(self, peer: bytes, data: bytes) -> None:
        if peer not in self.down and self.me not in self.down:
            self.services[peer].deliver_nowait(data)
        await trio.lowlevel.checkpoint()

    async def broadcast(self, data: bytes) -> None:
        for peer in self.services:
            if peer != self.me:
                await self.send_to(peer, data)


def _cluster(
    tmp_path: Path, down: set[bytes], *, threads: bool = True
) -> tuple[list[ConsensusService], list[ToyApp]]:
    services: dict[bytes, ConsensusService] = {}
    apps = []
    for i, key in enumerate(KEYS):
        app = ToyApp(ToyStorage())
        wal = FileWAL(tmp_path / f"wal{i}")
        replica = Replica(sim_config(), key, VS, app, genesis_digest=genesis_digest(),
                          wal_records=wal.records())
        services[key.public_key] = ConsensusService(
            replica, app, wal, FakeTransport(key.public_key, services, down), threads=threads
        )
        apps.append(app)
    return list(services.values()), apps


async def _submit(services: list[ConsensusService], apps: list[ToyApp], count: int) -> None:
    for _ in range(count):
        t = tx()
        for svc, app in zip(services, apps, strict=True):
            app.submit(t)
            svc.notify_pending()
        await trio.sleep(0.001)


async def test_cluster_of_services_commits(tmp_path: Path) -> None:
    services, apps = _cluster(tmp_path, set())
    async with trio.open_nursery() as nursery:
        for svc in services:
            await nursery.start(svc.run)
        await _submit(services, apps, 20)
        with trio.fail_after(60):
            for svc, app in zip(services, apps, strict=True):
                while len(app.committed_txs) < 20:
                    await svc.wait_committed(svc.executed_height + 1)
        nursery.cancel_scope.cancel()
    heights = {a.storage.height for a in apps}
    assert len(heights) == 1
    assert len({tuple(d for d, _, _ in a.storage.blocks) for a in apps}) == 1
    stats = services[1].statistics()
    assert stats.wal_syncs > 0
    assert stats.replica.committed_height == heights.pop()
    # every own vote reached the file before it was sent: the WAL replays
    assert FileWAL(tmp_path / "wal1").records()


async def test_crashed_primary_is_replaced_on_mock_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    down = {KEYS[0].public_key}
    # no worker threads: under autojump a thread would look idle and time would jump
    services, apps = _cluster(tmp_path, down, threads=False)
    async with trio.open_nursery() as nursery:
        for svc in services[1:]:
            await nursery.start(svc.run)
        await _submit(services[1:], apps[1:], 5)
        with trio.fail_after(60):  # simulated seconds: view change takes ~0.4 s
            for svc in services[1:]:
                await svc.wait_committed(1)
        nursery.cancel_scope.cancel()
    assert all(s.replica.view >= 1 for s in services[1:])
    assert trio.current_time() < 60


async def test_full_input_queue_drops_and_counts(tmp_path: Path) -> None:
    services, _ = _cluster(tmp_path, set())
    svc = services[0]
    small = ConsensusService(svc.replica, svc.app, svc.wal, svc.transport, input_capacity=2)
    assert small.deliver_nowait(b"a") and small.deliver_nowait(b"b")
    assert not small.deliver_nowait(b"c")
    assert small.statistics().inputs_dropped == 1


class RunToyApp(ToyApp):
    """A ToyApp with ``commit_run``: records each run and what the core knew meanwhile."""

    def __init__(self) -> None:
        super().__init__(ToyStorage())
        self.runs: list[list[int]] = []
        self.core_executed_during: list[int] = []
        self.replica: Replica | None = None

    def commit_run(self, items: Sequence[tuple[int, bytes, bytes]]) -> list[bytes]:
        assert self.replica is not None
        self.runs.append([h for h, _, _ in items])
        self.core_executed_during.append(self.replica._executed)
        return [self.commit(h, b, c) for h, b, c in items]


async def test_a_run_of_commits_is_one_bounded_commit_run_reported_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 heights in one hand-off: runs of at most RUN_MAX_BLOCKS (and bytes), each durable
    (commit_run returned) before the core hears of any height in it."""
    app = RunToyApp()
    wal = FileWAL(tmp_path / "wal")
    replica = Replica(sim_config(), KEYS[0], VS, app, genesis_digest=genesis_digest())
    app.replica = replica
    svc = ConsensusService(replica, app, wal, FakeTransport(KEYS[0].public_key, {}, set()),
                           threads=False)
    parent = genesis_digest()
    effects: list[Effect] = []
    for h in range(1, 151):
        data, digest = block(h, parent)
        effects.append(CommitBlock(h, data, digest, CommitCertificate(h, 0, digest, [])))
        parent = digest
    await svc._apply(effects[:130])
    monkeypatch.setattr(
        service_module, "RUN_MAX_BYTES", 5 * max(len(e.block) for e in effects[130:])
    )
    await svc._apply(effects[130:])
    assert [len(r) for r in app.runs] == [64, 64, 2, 5, 5, 5, 5]  # by count, then by bytes
    assert [h for r in app.runs for h in r] == list(range(1, 151))
    # The core learned of a run's heights only after commit_run returned.
    assert app.core_executed_during == [r[0] - 1 for r in app.runs]
    assert svc.executed_height == replica._executed == 150


class HoldingTransport(FakeTransport):
    """FakeTransport whose messages to ``paused`` peers wait in ``held`` (a stopped process)."""

    def __init__(
        self,
        me: bytes,
        services: dict[bytes, ConsensusService],
        paused: set[bytes],
        held: list[tuple[bytes, bytes]],
    ) -> None:
        super().__init__(me, services, set())
        self.paused, self.held = paused, held

    async def send_to(self, peer: bytes, data: bytes) -> None:
        if peer in self.paused:
            self.held.append((peer, data))
            await trio.lowlevel.checkpoint()
        else:
            await super().send_to(peer, data)


async def test_a_backup_resumed_after_a_stall_hears_the_others_before_its_timers(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    backup = next(k.public_key for k in KEYS if k.public_key != VS.primary(0))
    paused: set[bytes] = {backup}
    held: list[tuple[bytes, bytes]] = []
    services: dict[bytes, ConsensusService] = {}
    apps = []
    for i, key in enumerate(KEYS):
        app = ToyApp(ToyStorage())
        wal = FileWAL(tmp_path / f"wal{i}")
        replica = Replica(sim_config(), key, VS, app, genesis_digest=genesis_digest())
        transport = HoldingTransport(key.public_key, services, paused, held)
        services[key.public_key] = ConsensusService(replica, app, wal, transport, threads=False)
        apps.append(app)
    svcs = list(services.values())
    stalled = services[backup]
    async with trio.open_nursery() as nursery:
        for svc in svcs:
            await nursery.start(svc.run)
        t = tx()
        for svc, app in zip(svcs, apps, strict=True):  # every mempool has it: the backup has work
            app.submit(t)
            svc.notify_pending()
        await trio.testing.wait_all_tasks_blocked()
        others = [s for s in svcs if s is not stalled]
        assert all(s.executed_height >= 1 for s in others)  # a quorum went on without it
        assert stalled.executed_height == 0
        # The backup's process was stopped past its progress timeout (0.4 s); the
        # others' messages waited in its sockets. On waking its loop sees the
        # overdue timer first, and the transport hands over the messages a
        # moment later (here: once the service had its turn).
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        paused.clear()
        for peer, data in held:
            services[peer].deliver_nowait(data)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(service_module.CATCH_UP_S)
        await trio.testing.wait_all_tasks_blocked()
        top = max(s.executed_height for s in others)
        assert stalled.executed_height == top  # committed by consensus, from what it heard
        assert stalled.replica.statistics().view_changes == 0
        assert not stalled.replica.in_view_change and stalled.replica.view == 0
        nursery.cancel_scope.cancel()
