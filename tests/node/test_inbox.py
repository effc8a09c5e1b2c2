"""FairInbox: one sender's flood neither crowds out the others nor grows memory."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.inbox import FairInbox

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def drain(inbox: FairInbox) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        try:
            out.append(inbox.get_nowait())
        except trio.WouldBlock:
            return out


def test_round_robin_between_senders() -> None:
    inbox = FairInbox(per_sender=100, per_sender_bytes=10_000)
    for i in range(50):
        inbox.put_nowait(A, b"flood%d" % i)
    inbox.put_nowait(B, b"b0")
    inbox.put_nowait(C, b"c0")
    inbox.put_nowait(B, b"b1")
    got = drain(inbox)
    # The honest senders' messages are all out within the first few turns.
    assert got[:5] == [(A, b"flood0"), (B, b"b0"), (C, b"c0"), (A, b"flood1"), (B, b"b1")]
    assert [d for s, d in got if s == A] == [b"flood%d" % i for i in range(50)]  # FIFO per sender
    assert inbox.statistics().queued == 0


def test_a_full_sender_loses_its_own_oldest_only() -> None:
    inbox = FairInbox(per_sender=3, per_sender_bytes=10_000)
    inbox.put_nowait(B, b"honest")
    results = [inbox.put_nowait(A, b"%d" % i) for i in range(10)]
    assert results == [True] * 3 + [False] * 7
    st = inbox.statistics()
    assert (st.queued, st.dropped, st.senders) == (4, 7, 2)
    assert drain(inbox) == [(B, b"honest"), (A, b"7"), (A, b"8"), (A, b"9")]


def test_bytes_bound_per_sender() -> None:
    inbox = FairInbox(per_sender=1000, per_sender_bytes=100)
    for _ in range(10):
        inbox.put_nowait(A, b"x" * 40)
    assert inbox.statistics().queued == 2  # 80 bytes; a third would pass 100
    assert not inbox.put_nowait(A, b"y" * 101)  # larger than the bound on its own
    assert inbox.put_nowait(C, b"z" * 100)
    assert [len(d) for _, d in drain(inbox)] == [40, 100, 40]
    assert inbox.statistics().dropped == 9
    with pytest.raises(ValueError):
        FairInbox(per_sender=0, per_sender_bytes=1)


async def test_get_waits_for_a_message() -> None:
    inbox = FairInbox(per_sender=4, per_sender_bytes=100)
    got: list[tuple[bytes, bytes]] = []

    async def reader() -> None:
        got.append(await inbox.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        inbox.put_nowait(B, b"hello")
    assert got == [(B, b"hello")]
