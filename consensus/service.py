"""The Trio service that owns one PBFT replica and performs its effects.

One task owns the :class:`consensus.core.Replica`: every input (a message from
the transport, a timer expiry, "the mempool has work") goes through one
bounded channel and is handled to completion, effects in order, before the
next. That single owner is why the core needs no locks, and the order of
effects is what makes the WAL meaningful: own votes are appended on
:class:`~consensus.core.Persist` and fsynced (in a worker thread) before the
first send that follows.

Start it with ``await nursery.start(service.run)``; it returns once the replica
has started (timers armed, WAL replayed). Cancel the nursery to stop it; a
stopped service leaves the WAL consistent because every send was preceded by
its sync. Blocking work (fsync, application commit) runs in worker threads.

Backpressure: :meth:`ConsensusService.deliver_nowait` drops (and counts) a
message when the input channel is full -- a flood of peer messages can slow
this node down but never grow its memory. The transport's ``send_to`` and
``broadcast`` must not block for long (they should enqueue per peer).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from consensus.app import Application
from consensus.core import (
    Broadcast,
    CancelTimer,
    CommitBlock,
    Effect,
    Evidence,
    Persist,
    Replica,
    ReplicaStatistics,
    RewriteWAL,
    SendTo,
    StartTimer,
    TimerKind,
)
from consensus.wal import WalStore
from ledger import codec

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus


class Transport(Protocol):
    """Point-to-point and all-validators delivery of encoded envelopes."""

    async def send_to(self, peer: bytes, data: bytes) -> None: ...

    async def broadcast(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceStatistics:
    replica: ReplicaStatistics
    inputs_dropped: int
    evidence: int
    wal_syncs: int


class _Wake:
    """Channel item that only wakes the loop (pending work flagged elsewhere)."""


_WAKE = _Wake()

#: Inputs handled per scheduler turn at most (see ``ConsensusService._drain_queued``).
_DRAIN_BATCH = 64
#: Bounds of one run of commits handed to the worker thread (and, for an
#: application with ``commit_run``, written in one synced batch): its blocks
#: and the writes they cause are held in memory until the batch is durable.
RUN_MAX_BLOCKS = 64
#: A timer this late (seconds) means the loop was not running when it expired;
#: the service then listens for up to CATCH_UP_S before acting on timers.
LATE_TIMER_S = 0.25
CATCH_UP_S = 0.25
RUN_MAX_BYTES = 16 * 1024 * 1024


@runtime_checkable
class RunCommitter(Protocol):
    """An application that can execute consecutive heights with one durable write.

    Optional, beside :meth:`consensus.app.Application.commit`: the service
    uses it when present. It must make every height of the run durable before
    it returns (the core learns of each execution only afterwards) and
    return the state digests in order.
    """

    def commit_run(self, items: Sequence[tuple[int, bytes, bytes]]) -> list[bytes]: ...


class ConsensusService:
    """Drives one replica from a Trio task. See the module docstring."""

    def __init__(
        self,
        replica: Replica,
        app: Application,
        wal: WalStore,
        transport: Transport,
        *,
        input_capacity: int = 1024,
        threads: bool = True,
        on_evidence: Callable[[Evidence], None] | None = None,
        on_commit: Callable[[CommitBlock], None] | None = None,
    ) -> None:
        self.replica = replica
        self.app = app
        self.wal = wal
        self.transport = transport
        self._send, self._recv = trio.open_memory_channel[bytes | _Wake](input_capacity)
        self._threads = threads
        self._on_evidence = on_evidence
        self._on_commit = on_commit
        self._timers: dict[TimerKind, tuple[float, int]] = {}
        self._pending = False
        self._dirty = False
        self._dropped = 0
        self._evidence = 0
        self._syncs = 0
        self.executed_height = replica.committed
        self.committed = trio.Event()  # replaced on every commit; see wait_committed
        self._view_seen = (replica.view, replica.in_view_change, replica.vc_target)

    # ------------------------------------------------------------------ inputs

    def deliver_nowait(self, data: bytes) -> bool:
        """Queue a message from a peer; False (and counted) if the input queue is full."""
        try:
            self._send.send_nowait(data)
        except trio.WouldBlock:
            self._dropped += 1
            return False
        return True

    async def deliver(self, data: bytes) -> None:
        await self._send.send(data)

    def input_room(self) -> int:
        """How many more inputs :meth:`deliver_nowait` would take right now."""
        st = self._send.statistics()
        return int(st.max_buffer_size) - st.current_buffer_used

    def notify_pending(self) -> None:
        """The mempool has work; coalesced, never blocks."""
        self._pending = True
        with contextlib.suppress(trio.WouldBlock):  # busy loop: it will see the flag
            self._send.send_nowait(_WAKE)

    async def wait_committed(self, height: int) -> None:
        """Return once the application has executed ``height``."""
        while self.executed_height < height:
            await self.committed.wait()

    def statistics(self) -> ServiceStatistics:
        return ServiceStatistics(
            self.replica.statistics(), self._dropped, self._evidence, self._syncs
        )

    # ------------------------------------------------------------------ loop

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._apply(self.replica.start())
        task_status.started()
        while True:
            deadline = min((d for d, _ in self._timers.values()), default=math.inf)
            item: bytes | _Wake | None = None
            # Only the wait is bounded by the next timer: cancelling _apply half-way
            # would lose effects (a commit, a WAL sync) the core believes happened.
            with trio.move_on_at(deadline):
                item = await self._recv.receive()
            await self._handle(item)
            now = trio.current_time()
            if deadline <= now - LATE_TIMER_S:
                await self._hear_first()
                now = trio.current_time()
            for kind, (due, token) in sorted(self._timers.items(), key=lambda kv: kv[1][0]):
                if due <= now and self._timers.get(kind) == (due, token):
                    del self._timers[kind]
                    await self._apply(self.replica.timeout(kind, token))

    async def _hear_first(self) -> None:
        """A timer is long overdue: take in what peers sent meanwhile before acting on it.

        The loop was not running when the timer expired (the process was
        paused, the event loop or the machine stalled). What the others did in
        that time is still queued here or in the transport: a backup resumed
        from SIGSTOP under load used to fire its progress timeout first and
        start a view change alone, then sat in it - out of the voting - while
        the others went on in the old view. So everything queued is handled
        first, then whatever arrives within :data:`CATCH_UP_S`, and only then
        the timers that are still due (progress resets those that are not).
        """
        until = trio.current_time() + CATCH_UP_S
        while True:
            with trio.move_on_at(until) as waited:  # only the wait is bounded, as in run()
                item = await self._recv.receive()
            if waited.cancelled_caught:
                return
            await self._handle(item)

    async def _handle(self, item: bytes | _Wake | None) -> None:
        """One input (and what else is queued behind it), then pending mempool work."""
        if isinstance(item, bytes):
            await self._apply(self.replica.receive(item))
            await self._drain_queued()
        if self._pending:
            self._pending = False
            await self._apply(self.replica.notify_pending())

    async def _drain_queued(self) -> None:
        """Handle what else is already queued (up to a bound) before yielding.

        Every ``receive`` is a turn of the Trio scheduler. One message per turn
        left the replica a sliver of the event loop whenever many other tasks
        were runnable: under a flood of API requests on the same node it
        handled a few percent of the time and fell views behind. Timers wait
        for at most one batch.
        """
        for _ in range(_DRAIN_BATCH - 1):
            try:
                item = self._recv.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(item, bytes):
                await self._apply(self.replica.receive(item))

    async def _run_sync(self, fn: Callable[[], object]) -> object:
        if self._threads:
            return await trio.to_thread.run_sync(fn)
        return fn()

    def _commit_run(self, run: list[CommitBlock]) -> list[bytes]:
        """Execute consecutive committed heights in order (in the worker thread).

        With a :class:`RunCommitter` the whole run becomes durable in one
        write (one fsync instead of one per height); either way every height
        is durable before this returns, and only then does the core hear of it.
        """
        if isinstance(self.app, RunCommitter):
            items = [(e.height, e.block, codec.encode(e.certificate)) for e in run]
            states = self.app.commit_run(items)
            if len(states) != len(run) or not all(isinstance(s, bytes) for s in states):
                raise TypeError("commit_run must return one state digest per height")
            return states
        out = []
        for e in run:
            state = self.app.commit(e.height, e.block, codec.encode(e.certificate))
            assert isinstance(state, bytes)
            out.append(state)
        return out

    async def _sync_wal(self) -> None:
        if self._dirty:
            self._dirty = False
            self._syncs += 1
            await self._run_sync(self.wal.sync)

    def _log_view(self) -> None:
        """Log each view transition once: the operator's first question when blocks stop."""
        r = self.replica
        now = (r.view, r.in_view_change, r.vc_target)
        if now == self._view_seen:
            return
        self._view_seen = now
        if r.in_view_change:
            log.warning("view change: leaving view %d for view %d (height %d)",
                        r.view, r.vc_target, r.committed)
        else:
            primary = r.vs.primary(r.view)
            log.info("entered view %d at height %d; primary %s%s", r.view, r.committed,
                     primary.hex()[:16], " (this node)" if primary == r.id else "")

    async def _apply(self, effects: list[Effect]) -> None:
        self._log_view()
        todo = deque(effects)
        while todo:
            e = todo.popleft()
            if isinstance(e, Persist):
                self.wal.append(e.record)
                self._dirty = True
            elif isinstance(e, RewriteWAL):
                self._dirty = False
                await self._run_sync(partial(self.wal.rewrite, e.records))
            elif isinstance(e, Broadcast):
                await self._sync_wal()
                await self.transport.broadcast(e.data)
            elif isinstance(e, SendTo):
                await self._sync_wal()
                await self.transport.send_to(e.peer, e.data)
            elif isinstance(e, CommitBlock):
                # A run of commits (state transfer hands over up to a batch of
                # blocks at once) goes to the worker thread in one hand-off.
                run = [e]
                size = len(e.block)
                while (
                    todo
                    and isinstance(todo[0], CommitBlock)
                    and len(run) < RUN_MAX_BLOCKS
                    and size + len(todo[0].block) <= RUN_MAX_BYTES
                ):
                    nxt = todo.popleft()
                    assert isinstance(nxt, CommitBlock)
                    run.append(nxt)
                    size += len(nxt.block)
                states = await self._run_sync(partial(self._commit_run, run))
                assert isinstance(states, list)
                for done, state in zip(run, states, strict=True):
                    # executed() must follow the commit before any other input; its
                    # effects queue behind the rest, exactly as one commit at a time.
                    todo.extend(self.replica.executed(done.height, state))
                    self.executed_height = done.height
                    if self._on_commit is not None:
                        self._on_commit(done)
                event, self.committed = self.committed, trio.Event()
                event.set()
            elif isinstance(e, StartTimer):
                self._timers[e.kind] = (trio.current_time() + e.duration_ms / 1000, e.token)
            elif isinstance(e, CancelTimer):
                self._timers.pop(e.kind, None)
            elif isinstance(e, Evidence):
                self._evidence += 1
                if self._on_evidence is not None:
                    self._on_evidence(e)
