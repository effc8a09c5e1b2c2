"""Stall watchdog: driven by MockClock, and once by a real blocking call."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from node.metrics import NodeMetrics
from node.watchdog import StallWatchdog, run_stall_watchdog


async def test_stall_counted_with_mock_clock(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = NodeMetrics()
    watchdog = StallWatchdog(threshold_s=0.1, interval_s=0.05, metrics=metrics)
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        for _ in range(3):  # on-time wake-ups: no stall
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked()
        assert watchdog.statistics().wakeups == 3 and watchdog.statistics().stalls == 0
        mock_clock.jump(0.05 + 0.25)  # the loop "blocked" 250 ms past the deadline
        await trio.testing.wait_all_tasks_blocked()
        stats = watchdog.statistics()
        assert stats.stalls == 1
        assert stats.max_lateness_s == pytest.approx(0.25)
        mock_clock.jump(0.05 + 0.09)  # late, but under the threshold: not a stall
        await trio.testing.wait_all_tasks_blocked()
        assert watchdog.statistics().stalls == 1
        nursery.cancel_scope.cancel()
    assert metrics.registry.get_sample_value("medledger_event_loop_stalls_total") == 1
    assert metrics.registry.get_sample_value("medledger_event_loop_stall_seconds_count") == 1
    assert any("stalled for 250 ms" in r.getMessage() for r in caplog.records)


async def test_real_blocking_call_is_detected() -> None:
    async with trio.open_nursery() as nursery:
        watchdog = await nursery.start(run_stall_watchdog)
        assert isinstance(watchdog, StallWatchdog)
        await trio.sleep(0)
        with trio.fail_after(10):  # a deadline, not a measurement
            while watchdog.statistics().stalls == 0:
                time.sleep(0.3)  # deliberately block the event loop
                with trio.move_on_after(1):
                    await watchdog.wait_stall()
        assert watchdog.statistics().max_lateness_s >= 0.1
        nursery.cancel_scope.cancel()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        StallWatchdog(threshold_s=0)
