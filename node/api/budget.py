"""One budget for the request-body bytes the API holds at once, across all requests.

A per-request size limit does not bound memory: sixteen clients each sending
a 30 MiB batch body made a node's peak RSS reach 619 MB in the flood test of
``tests/hardening/test_byzantine.py``, and nothing stopped a hundred. The body
bytes a request holds are reserved here while they arrive (a slow sender
holds only what it has sent) and released when its handler has answered; a
request that would exceed the budget is refused with ``BUSY`` (HTTP 503, the
client retries) instead of being buffered. A body whose declared length
cannot fit is refused before any of it is read.
"""

from __future__ import annotations

from node.mempool import BusyError

__all__ = ["BodyBudget"]


class BodyBudget:
    """Counts reserved body bytes against ``limit``; single-threaded (the Trio thread)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("body budget must be positive")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.refused = 0

    def available(self) -> int:
        return self.limit - self.in_use

    def check_room(self, n: int) -> None:
        """Raise :class:`BusyError` (counted) unless ``n`` more bytes would fit now."""
        if n > self.limit - self.in_use:
            self.refused += 1
            raise BusyError("too many request bytes in flight; retry later")

    def reserve(self, n: int) -> None:
        """Take ``n`` bytes or raise :class:`BusyError` (nothing taken)."""
        self.check_room(n)
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def release(self, n: int) -> None:
        self.in_use -= n
