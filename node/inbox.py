"""Consensus messages waiting for the replica, queued per sending validator.

All validators' messages used to wait in one FIFO in front of the consensus
service, dropped when it was full. A Byzantine validator flooding signed
messages for far heights and views (2,000/s in
``tests/hardening/test_byzantine.py``) then filled that FIFO, and the honest
validators' PREPAREs and COMMITs were dropped with its junk: one peer could
slow everyone's commits to a crawl.

Here each sender has its own bounded queue and the replica is fed from them
in turn, one message per sender per round. A flooding sender only ever
overflows (and loses) its own queue -- the oldest message goes, as in the
transport's send queues -- and the others wait behind at most one of its
messages per round, however fast it sends. That is the per-peer rate limit
of the consensus input: each peer gets an equal share of the replica when
the replica is the bottleneck, and all it asks for when it is not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import trio

__all__ = ["FairInbox", "InboxStatistics"]


@dataclass(frozen=True, slots=True)
class InboxStatistics:
    queued: int
    #: Messages dropped because their sender's queue was full (oldest first).
    dropped: int
    senders: int


class FairInbox:
    """Per-sender FIFO queues, drained round-robin.

    A sender's queue holds at most ``per_sender`` messages and
    ``per_sender_bytes`` bytes (which must admit one message of the largest
    size the transport lets in), so the inbox holds at most senders x
    ``per_sender_bytes`` whatever anyone sends. ``put_nowait`` never blocks
    (the transport's reader must not stall on one peer); ``get`` waits for a
    message. Owned by the Trio thread.
    """

    def __init__(self, per_sender: int, per_sender_bytes: int) -> None:
        if per_sender < 1 or per_sender_bytes < 1:
            raise ValueError("per_sender and per_sender_bytes must be >= 1")
        self._cap = per_sender
        self._cap_bytes = per_sender_bytes
        self._queues: dict[bytes, deque[bytes]] = {}
        self._bytes: dict[bytes, int] = {}
        self._turns: deque[bytes] = deque()  # senders with queued messages, in turn order
        self._event = trio.Event()
        self._queued = 0
        self._dropped = 0

    def put_nowait(self, sender: bytes, data: bytes) -> bool:
        """Queue ``data``; False if it displaced older messages of that sender (counted).

        A message larger than ``per_sender_bytes`` on its own is dropped (and counted).
        """
        if len(data) > self._cap_bytes:
            self._dropped += 1
            return False
        q = self._queues.get(sender)
        if q is None:
            q = self._queues[sender] = deque()
            self._bytes[sender] = 0
        if not q:
            self._turns.append(sender)
        ok = True
        while q and (len(q) >= self._cap or self._bytes[sender] + len(data) > self._cap_bytes):
            self._bytes[sender] -= len(q.popleft())
            self._dropped += 1
            self._queued -= 1
            ok = False
        q.append(data)
        self._bytes[sender] += len(data)
        self._queued += 1
        self._event.set()
        return ok

    def get_nowait(self) -> tuple[bytes, bytes]:
        """The next sender's oldest message; raises ``trio.WouldBlock`` when all are empty."""
        if not self._turns:
            raise trio.WouldBlock
        sender = self._turns.popleft()
        q = self._queues[sender]
        data = q.popleft()
        self._bytes[sender] -= len(data)
        self._queued -= 1
        if q:
            self._turns.append(sender)  # its next message waits for everyone else's turn
        return sender, data

    async def get(self) -> tuple[bytes, bytes]:
        while True:
            try:
                return self.get_nowait()
            except trio.WouldBlock:
                self._event = trio.Event()
                await self._event.wait()

    def statistics(self) -> InboxStatistics:
        return InboxStatistics(self._queued, self._dropped, len(self._queues))
