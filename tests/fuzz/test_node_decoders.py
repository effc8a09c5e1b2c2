"""Fuzz the node's outer layers: gossip batches, p2p frames and the HTTP API.

Contracts:

* :func:`node.mempool.decode_batch` ends in a batch or the ``DecodeError``
  family; :meth:`node.mempool.Mempool.add_batch` on a real ledger checker ends
  in an outcome or that family (single bad txs are counted, never raised);
* :class:`node.p2p.FrameReader` yields frames no larger than its limit or
  raises :class:`node.p2p.FrameError`, however the bytes are split by the network;
* the ASGI app answers every request — wild bodies, paths and signed-read
  headers — with a JSON typed error or a success, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import trio
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import DecodeError, LedgerError
from ledger.keys import KeyPair
from node.api import ApiSettings, create_app
from node.client import sign_request
from node.mempool import BatchOutcome, Mempool, TxBatch, decode_batch, encode_batch
from node.metrics import NodeMetrics
from node.p2p import FrameError, FrameReader, encode_frame
from tests.fuzz.harness import any_input, run_case
from tests.fuzz.test_ledger_decoders import RECORD_BLOB, TX_SEEDS, WRAP_BLOB
from tests.node.test_api import NOW_MS, FakeFacade
from tests.node.test_mempool import real_pool
from tests.node.test_mempool import tx as pool_tx

POOL_TXS = [pool_tx(100, n, patient=n) for n in range(4)]
BATCH_SEEDS = [
    encode_batch([(t, None) for t in POOL_TXS]),
    encode_batch([(TX_SEEDS[3], RECORD_BLOB), (TX_SEEDS[8], WRAP_BLOB)]),
    encode_batch([]),
]
MAX_BATCH = 256 * 1024


# --- gossip batches ----------------------------------------------------------------------


@given(data=any_input(BATCH_SEEDS, max_raw=1024))
def test_decode_batch(data: bytes) -> None:
    run_case("mempool.decode_batch", lambda: decode_batch(data, MAX_BATCH), allowed=(DecodeError,))


_POOL: list[Mempool] = []


def _add_batch(data: bytes) -> BatchOutcome:
    """Into one real mempool for the whole run (building one costs a genesis apply)."""

    async def main() -> BatchOutcome:
        if not _POOL:
            _POOL.append(real_pool()[0])
        return await _POOL[0].add_batch(data)

    return trio.run(main)


@given(data=any_input(BATCH_SEEDS, max_raw=1024))
def test_add_batch(data: bytes) -> None:
    outcome = run_case(
        "mempool.add_batch",
        lambda: _add_batch(data),
        allowed=(DecodeError,),
        label=lambda o: "some accepted" if o.accepted else "none accepted",
    )
    if outcome is not None:
        batch = decode_batch(data, MAX_BATCH)
        assert outcome.accepted + outcome.duplicates + outcome.rejected == len(batch.items)


def test_batch_seed_is_accepted() -> None:
    async def main() -> BatchOutcome:
        return await real_pool()[0].add_batch(BATCH_SEEDS[0])

    assert trio.run(main).accepted == len(POOL_TXS)
    assert isinstance(decode_batch(BATCH_SEEDS[1], MAX_BATCH), TxBatch)


# --- p2p frames --------------------------------------------------------------------------


class ChunkedStream:
    """A stream that hands out ``data`` in the given chunk sizes, then EOF."""

    def __init__(self, data: bytes, cuts: Sequence[int]) -> None:
        self._chunks: list[bytes] = []
        pos = 0
        for cut in sorted(set(cuts)):
            if pos < cut < len(data):
                self._chunks.append(data[pos:cut])
                pos = cut
        self._chunks.append(data[pos:])

    async def read(self, n: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._chunks.pop(0) if self._chunks else b""


FRAME_LIMIT = 64


def _read_frames(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    async def main() -> list[bytes]:
        reader = FrameReader(ChunkedStream(data, cuts), FRAME_LIMIT)
        frames = []
        while (frame := await reader.read_frame()) is not None:
            assert len(frame) <= FRAME_LIMIT
            frames.append(frame)
        return frames

    return trio.run(main)


FRAME_SEEDS = [
    encode_frame(b"") + encode_frame(b"x" * FRAME_LIMIT),
    encode_frame(b"hello") * 3,
    b"\xff" * 9 + b"\x00",  # a ten-byte varint of a huge length
]


@given(data=any_input(FRAME_SEEDS, max_raw=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_frame_reader(data: bytes, cuts: list[int]) -> None:
    run_case("p2p.FrameReader", lambda: _read_frames(data, cuts), allowed=(FrameError,))


@given(
    payloads=st.lists(st.binary(max_size=FRAME_LIMIT), max_size=5),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_frame_round_trip(payloads: list[bytes], cuts: list[int]) -> None:
    """However the network splits them, valid frames come back exactly."""
    data = b"".join(encode_frame(p) for p in payloads)
    assert _read_frames(data, cuts) == payloads


# --- the HTTP API --------------------------------------------------------------------------


class PoolFacade(FakeFacade):
    """The API test's fake facade, but submissions go through a real mempool and ledger checks."""

    def __init__(self, metrics: NodeMetrics, pool: Mempool) -> None:
        super().__init__(metrics)
        self.pool = pool

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        return self.pool.add(tx, blob)

    async def submit_batch(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> Sequence[bytes | LedgerError]:
        out: list[bytes | LedgerError] = []
        for tx, blob in items:
            try:
                out.append(self.pool.add(tx, blob))
            except LedgerError as exc:
                out.append(exc)
        return out


READER = KeyPair.from_seed(b"\x42" * 32)


def _tx_json(tx: bytes, blob: bytes | None = None) -> dict[str, str | None]:
    return {"tx": tx.hex(), "blob": None if blob is None else blob.hex()}


BODY_SEEDS = [
    json.dumps(_tx_json(POOL_TXS[0])).encode(),
    json.dumps(_tx_json(TX_SEEDS[3], RECORD_BLOB)).encode(),
    json.dumps({"txs": [_tx_json(t) for t in POOL_TXS[:3]]}).encode(),
    json.dumps({"txs": [_tx_json(TX_SEEDS[8], WRAP_BLOB)]}).encode(),
]
PATHS = [
    "/v1/txs",
    "/v1/txs/batch",
    "/v1/txs/" + "ab" * 32,
    "/v1/blocks/5",
    "/v1/blocks/latest",
    "/v1/accounts/" + "07" * 32,
    "/v1/records/" + "11" * 16,
    "/v1/patients/" + "22" * 32 + "/audit",
]


_APP: list[object] = []


def _app() -> object:
    """One app and mempool for the whole run: FastAPI takes ~20 ms to build."""
    if not _APP:
        metrics = NodeMetrics()
        pool, _ = real_pool()
        settings = ApiSettings(max_body_bytes=4096, max_batch_body_bytes=8192, max_batch_txs=5)
        facade = PoolFacade(metrics, pool)
        _APP.append(create_app(facade, settings, metrics=metrics, clock_ms=lambda: NOW_MS))
    return _APP[0]


def _request(method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.request(method, path, content=body, headers=headers)

    return trio.run(main)


def _answer(response: httpx.Response) -> str:
    """Check the shape of an answer; return its label for the tally."""
    assert response.status_code != 500, response.text
    assert response.status_code < 600
    if 300 <= response.status_code < 400:  # Starlette's trailing-slash redirect
        assert response.headers["location"].startswith("http://node/"), response.headers
        return str(response.status_code)
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        return f"{response.status_code} {body['error']['code']}"
    return str(response.status_code)


TX_INPUTS = any_input(TX_SEEDS + POOL_TXS, max_raw=200)
BLOB_HEX_INPUTS = st.one_of(st.none(), any_input([RECORD_BLOB, WRAP_BLOB], max_raw=200))
ITEMS = st.builds(_tx_json, TX_INPUTS, BLOB_HEX_INPUTS)
API_BODIES = st.one_of(
    any_input(BODY_SEEDS, max_raw=600),
    ITEMS.map(lambda item: json.dumps(item).encode()),
    st.lists(ITEMS, max_size=6).map(lambda items: json.dumps({"txs": items}).encode()),
)


@given(body=API_BODIES, batch=st.booleans())
def test_api_submit_bodies(body: bytes, batch: bool) -> None:
    path = "/v1/txs/batch" if batch else "/v1/txs"
    run_case(
        "api.POST /v1/txs[batch]",
        lambda: _answer(_request("POST", path, body, {"content-type": "application/json"})),
        allowed=(),
        label=lambda label: label,
    )


HEADER_VALUES = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF-x ", max_size=140),
    st.sampled_from(["", "0", "-1", "1e3", str(NOW_MS), str(2**70), "00" * 32, "00" * 64]),
)


@st.composite
def signed_reads(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    """A read of a wild path with real, altered or wild signature headers."""
    path = draw(st.one_of(st.sampled_from(PATHS), st.sampled_from(PATHS).map(lambda p: p[:-3])))
    suffix = draw(st.one_of(st.just(""), st.text(alphabet="abcdef0123456789/?=&%.-_", max_size=20)))
    target = path + suffix
    headers = sign_request(READER, "GET", target, timestamp_ms=NOW_MS)
    for name in list(headers):
        choice = draw(st.integers(0, 3))
        if choice == 1:
            headers[name] = draw(HEADER_VALUES)
        elif choice == 2:
            del headers[name]
    return "GET", target, headers


@given(read=signed_reads())
def test_api_paths_and_signed_headers(read: tuple[str, str, dict[str, str]]) -> None:
    method, target, headers = read
    run_case(
        "api.GET paths+signed headers",
        lambda: _answer(_request(method, target, b"", headers)),
        allowed=(),
        label=lambda label: label,
    )


def test_api_seeds_are_accepted() -> None:
    """Sanity of the oracle: an unmutated seed is accepted, a signed read is served."""
    assert _answer(_request("POST", "/v1/txs", BODY_SEEDS[0], {})) == "202"  # or a duplicate
    assert _answer(_request("POST", "/v1/txs/batch", BODY_SEEDS[2], {})) == "200"
    target = PATHS[6]
    # A timestamp of its own: the fuzz run may have spent NOW_MS's signature (replay cache).
    headers = sign_request(READER, "GET", target, timestamp_ms=NOW_MS - 7)
    assert _answer(_request("GET", target, b"", headers)) == "200"
