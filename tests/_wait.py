"""Waiting in Trio tests: poll a condition until a deadline, never sleep a fixed time."""

from __future__ import annotations

from collections.abc import Callable

import trio

DEFAULT_DEADLINE_S = 15.0


async def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = DEFAULT_DEADLINE_S
) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
