"""Event-loop stall watchdog.

The node makes synchronous calls on the Trio thread (LevelDB writes, ed25519
batches, state-tree hashing); one that runs long freezes consensus timers,
gossip and the API at once. The watchdog is a tiny task that sleeps
``interval_s`` in a loop and measures how late it wakes up with
``trio.current_time()`` (Trio's monotonic clock, so tests drive it with
``MockClock``). A wake-up later than ``threshold_s`` is a stall: it is
logged at WARNING and counted (``medledger_event_loop_stalls_total`` and the
lateness histogram). The task costs one wake-up per interval.

It is like trinity's ``monitor_event_loop``; unlike a thread-based sampler it
cannot say *what* blocked, only that and how long - enough to correlate with
the other metrics and logs of the same moment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from node.metrics import NodeMetrics, NoopMetrics

if TYPE_CHECKING:  # trio-typing's stubs (a libp2p dependency) shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchdogStatistics:
    stalls: int
    max_lateness_s: float
    last_lateness_s: float
    wakeups: int


class StallWatchdog:
    """Counts and logs event-loop stalls longer than ``threshold_s``."""

    def __init__(
        self,
        *,
        threshold_s: float = 0.1,
        interval_s: float = 0.05,
        metrics: NodeMetrics | None = None,
    ) -> None:
        if threshold_s <= 0 or interval_s <= 0:
            raise ValueError("watchdog threshold and interval must be positive")
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self._metrics = metrics if metrics is not None else NoopMetrics()
        self._stalls = 0
        self._max_lateness = 0.0
        self._last_lateness = 0.0
        self._wakeups = 0
        self._stalled = trio.Event()  # set at the first stall; replaced after

    def statistics(self) -> WatchdogStatistics:
        return WatchdogStatistics(
            self._stalls, self._max_lateness, self._last_lateness, self._wakeups
        )

    async def wait_stall(self) -> None:
        """Return at the next stall (for tests and diagnostics)."""
        await self._stalled.wait()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        task_status.started()
        while True:
            expected = trio.current_time() + self.interval_s
            await trio.sleep_until(expected)
            self.observe(trio.current_time() - expected)

    def observe(self, lateness_s: float) -> None:
        """Account one wake-up that came ``lateness_s`` after its deadline."""
        self._wakeups += 1
        self._last_lateness = lateness_s
        if lateness_s <= self.threshold_s:
            return
        self._stalls += 1
        self._max_lateness = max(self._max_lateness, lateness_s)
        self._metrics.event_loop_stalls.inc()
        self._metrics.event_loop_stall_seconds.observe(lateness_s)
        log.warning(
            "event loop stalled for %.0f ms (threshold %.0f ms)",
            lateness_s * 1000,
            self.threshold_s * 1000,
        )
        self._stalled.set()
        self._stalled = trio.Event()


async def run_stall_watchdog(
    *,
    threshold_s: float = 0.1,
    interval_s: float = 0.05,
    metrics: NodeMetrics | None = None,
    task_status: TaskStatus[StallWatchdog] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``nursery.start(run_stall_watchdog, ...)`` returns the running :class:`StallWatchdog`."""
    watchdog = StallWatchdog(threshold_s=threshold_s, interval_s=interval_s, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        task_status.started(watchdog)
