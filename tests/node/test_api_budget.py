"""The API's node-wide body budget: concurrent bodies share it, every answer releases it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from node.api import ApiSettings, create_app
from node.api.budget import BodyBudget
from node.mempool import BusyError
from node.metrics import NodeMetrics
from tests.node.test_api import FakeFacade, error_code

BUDGET = 6000


def batch_body(tx_bytes: int) -> bytes:
    return b'{"txs": [{"tx": "' + b"01" * tx_bytes + b'"}]}'


def test_budget_reserves_refuses_and_releases() -> None:
    b = BodyBudget(100)
    b.reserve(60)
    with pytest.raises(BusyError):
        b.reserve(41)
    assert (b.in_use, b.refused) == (60, 1)
    b.check_room(40)
    b.release(60)
    b.reserve(100)
    assert (b.in_use, b.peak) == (100, 100)
    with pytest.raises(ValueError):
        BodyBudget(0)


async def test_concurrent_bodies_share_one_budget() -> None:
    settings = ApiSettings(
        max_body_bytes=4096, max_batch_body_bytes=8192, max_inflight_body_bytes=BUDGET
    )
    app = create_app(FakeFacade(NodeMetrics()), settings)
    budget: BodyBudget = app.state.body_budget
    held = batch_body(2400)  # 4,819 bytes, under the batch limit
    gate = trio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield held[:4000]
        await gate.wait()
        yield held[4000:]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        results: dict[str, httpx.Response] = {}

        async def post_slow() -> None:
            results["slow"] = await c.post("/v1/txs/batch", content=slow_body())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post_slow)
            await trio.testing.wait_all_tasks_blocked()
            assert budget.in_use == 4000  # what has arrived so far, not what will
            # 3,019 bytes cannot fit beside it: refused before it is read.
            r = await c.post("/v1/txs/batch", content=batch_body(1500))
            assert r.status_code == 503 and error_code(r) == "BUSY"
            # A small body still fits.
            r = await c.post("/v1/txs", json={"tx": "0102"})
            assert r.status_code == 202
            assert budget.in_use == 4000
            gate.set()
        assert results["slow"].status_code == 200
        assert budget.in_use == 0 and budget.peak == len(held)
        r = await c.post("/v1/txs/batch", content=batch_body(1500))
        assert r.status_code == 200
        # Refusals and errors release too.
        r = await c.post("/v1/txs/batch", content=b'{"txs": [' + b"9" * 5000)
        assert r.status_code == 400
        r = await c.post("/v1/txs", content=b"x" * 5000)
        assert r.status_code == 413
        assert budget.in_use == 0
