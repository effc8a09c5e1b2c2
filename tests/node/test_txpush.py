"""Txs too large for gossip reach every validator over a direct stream (node.txpush)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.metrics import NodeMetrics
from node.p2p import PeerUnavailableError
from node.txpush import TxPushService
from tests.node.test_mempool import pool, tx


class LoopTransport:
    """Request/response between in-process services; ``down`` peers are unreachable."""

    def __init__(self, me: bytes, net: dict[bytes, LoopTransport]) -> None:
        self.me = me
        self.net = net
        self.handler: Callable[[bytes, bytes], Awaitable[bytes]] | None = None
        self.down: set[bytes] = set()
        net[me] = self

    def connected_peers(self) -> list[bytes]:
        return [k for k in self.net if k != self.me and k not in self.down]

    def set_request_handler(
        self, handler: Callable[[bytes, bytes], Awaitable[bytes]], *, protocol: Any = None
    ) -> None:
        self.handler = handler

    async def request(
        self, public_key: bytes, data: bytes, *, timeout: float = 10.0, protocol: Any = None
    ) -> bytes:
        peer = self.net.get(public_key)
        if peer is None or public_key in self.down or peer.handler is None:
            raise PeerUnavailableError("down")
        return await peer.handler(self.me, data)


def _metric(metrics: NodeMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("medledger_tx_push_total", {"result": result})
    return value or 0.0


async def test_a_large_tx_reaches_every_validator_and_an_unreachable_one_is_counted() -> None:
    keys = [bytes([i]) * 32 for i in range(4)]
    net: dict[bytes, LoopTransport] = {}
    pools = [pool(max_batch_message_bytes=1000) for _ in keys]
    admitted: list[list[bytes]] = [[] for _ in keys]
    services = []
    for i, k in enumerate(keys):
        t = LoopTransport(k, net)
        services.append(TxPushService(
            pools[i][0], t, pools[i][2],
            validators=[v for v in keys if v != k],
            on_admitted=admitted[i].append,
        ))
    net[keys[0]].down.add(keys[3])  # node 3 cannot be reached from node 0
    big = b"\x07" * 5000  # over the 1000-byte gossip limit of these pools
    async with trio.open_nursery() as nursery:
        for s in services:
            await nursery.start(s.run)
        txh = await pools[0][0].submit(tx(1, 0), big)
        with trio.fail_after(30):
            while _metric(pools[0][2], "unreachable") < 1 or _metric(pools[0][2], "accepted") < 2:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert txh in pools[1][0] and txh in pools[2][0]
    assert txh not in pools[3][0]
    assert admitted[1] and admitted[2] and not admitted[3]
    assert _metric(pools[0][2], "accepted") == 2


async def test_a_malformed_push_is_refused_and_counted() -> None:
    mp, _, metrics = pool()
    net: dict[bytes, LoopTransport] = {}
    t = LoopTransport(b"\x01" * 32, net)
    svc = TxPushService(mp, t, metrics, validators=[], on_admitted=lambda data: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        assert t.handler is not None
        assert await t.handler(b"\x02" * 32, b"\xff garbage") == b"\x03"
        nursery.cancel_scope.cancel()
    assert len(mp) == 0
