"""Slow clients cannot hold the API: the real Hypercorn server on a loopback socket.

A slowloris client sends its headers and then one body byte a second: it is
answered 408 and disconnected once ``body_timeout_s`` has passed, while
other clients are served meanwhile and its share of the body budget comes
back. A client that trickles its headers is disconnected after
``keep_alive_timeout_s``. Every wait has a deadline; the one-second pauses
are the slow client's behaviour, not waits for a condition.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from node.api import ApiSettings, ServerSettings, create_app, serve_api
from node.api.server import hypercorn_config
from node.config import ConfigError, parse_config
from node.metrics import NodeMetrics
from tests.node.test_api import FakeFacade

BODY_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 2.0
#: Scheduling slack on a shared, loaded machine.
SLACK_S = 3.0


@dataclass
class Server:
    url: str
    host: str
    port: int
    app: Any


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    app = create_app(
        FakeFacade(NodeMetrics()), ApiSettings(body_timeout_s=BODY_TIMEOUT_S), metrics=NodeMetrics()
    )
    settings = ServerSettings(
        host="127.0.0.1", port=0, keep_alive_timeout_s=KEEP_ALIVE_S, read_timeout_s=30.0
    )
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(serve_api, app, settings)
        parts = urlsplit(urls[0])
        assert parts.hostname is not None and parts.port is not None
        yield Server(urls[0], parts.hostname, parts.port, app)
        nursery.cancel_scope.cancel()


async def trickle(stream: trio.SocketStream, byte: bytes) -> None:
    """The slow client: one byte a second until the server hangs up."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while True:
            await stream.send_all(byte)
            await trio.sleep(1.0)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    received = bytearray()
    with contextlib.suppress(trio.BrokenResourceError):
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def test_a_body_sent_a_byte_a_second_is_cut_off_and_others_are_served() -> None:
    async with serving() as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        await stream.send_all(
            b"POST /v1/txs HTTP/1.1\r\nhost: node\r\ncontent-type: application/json\r\n"
            b"content-length: 100000\r\n\r\n"
        )
        started = trio.current_time()
        with trio.fail_after(BODY_TIMEOUT_S + SLACK_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, stream, b" ")
                async with httpx.AsyncClient(base_url=server.url) as other:
                    r = await other.get("/health")  # while the slow body is held
                    assert r.status_code == 200
                    assert server.app.state.body_budget.in_use > 0  # its bytes are held
                received = await read_until_closed(stream)
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        await stream.aclose()
        assert received.startswith(b"HTTP/1.1 408 "), received[:80]
        assert b"REQUEST_TIMEOUT" in received
        assert elapsed >= BODY_TIMEOUT_S - 0.5
        assert server.app.state.body_budget.in_use == 0
        async with httpx.AsyncClient(base_url=server.url) as other:
            assert (await other.get("/health")).status_code == 200


async def test_headers_sent_a_byte_a_second_are_cut_off() -> None:
    async with serving() as server:
        stream = await trio.open_tcp_stream(server.host, server.port)
        await stream.send_all(b"POST /v1/txs HTTP/1.1\r\nx-slow: ")
        started = trio.current_time()
        with trio.fail_after(KEEP_ALIVE_S + SLACK_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, stream, b"a")
                received = await read_until_closed(stream)
                nursery.cancel_scope.cancel()
        await stream.aclose()
        assert received == b""  # no request ever started: closed without an answer
        assert trio.current_time() - started >= KEEP_ALIVE_S - 0.5


def test_the_timeouts_come_from_the_api_section(tmp_path: Path) -> None:
    table = {"api": {"body_timeout_s": 7, "keep_alive_timeout_s": 3, "read_timeout_s": 90}}
    cfg = parse_config(table, source="node.toml", base_dir=tmp_path)
    assert ApiSettings.from_config(cfg).body_timeout_s == 7.0
    hc = hypercorn_config(ServerSettings.from_config(cfg))
    assert (hc.keep_alive_timeout, hc.read_timeout) == (3.0, 90.0)
    defaults = hypercorn_config(
        ServerSettings.from_config(parse_config({}, source="x", base_dir=tmp_path))
    )
    assert (defaults.keep_alive_timeout, defaults.read_timeout) == (5.0, 60.0)
    for key, value in (("body_timeout_s", 0), ("keep_alive_timeout_s", -1), ("read_timeout_s", 0)):
        with pytest.raises(ConfigError, match=f"node.toml: api.{key}: must be >="):
            parse_config({"api": {key: value}}, source="node.toml", base_dir=tmp_path)
