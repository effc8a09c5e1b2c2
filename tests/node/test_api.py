"""HTTP API against a fake facade (in-process ASGI) and once on a real Hypercorn-Trio server."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from ledger.block import BlockHeader
from ledger.errors import (
    BadSignatureError,
    ErasedError,
    LedgerError,
    NonceGapError,
    NotFoundError,
    UnauthorizedError,
)
from ledger.keys import KeyPair
from ledger.merkle import InclusionProof
from ledger.tx import tx_hash
from node import config as node_config
from node.api import (
    ApiSettings,
    BlockView,
    NodeStatus,
    ReplayCache,
    ReplayedRequestError,
    ServerSettings,
    TxStatus,
    create_app,
    serve_api,
)
from node.api.app import HEX_BYTES_PATTERN, hex_pattern, parse_hex
from node.api.auth import ReplayCacheFullError
from node.api.facade import AccountView
from node.client import sign_request
from node.mempool import AlreadyKnownError, Mempool, MempoolFullError, MempoolSettings
from node.metrics import NodeMetrics
from tests.node.test_mempool import real_pool
from tests.node.test_mempool import tx as mempool_tx

NOW_MS = 1_800_000_000_000
SECRET = "PATIENT-NAME-Jane-Doe"


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class FakeFacade:
    def __init__(self, metrics: NodeMetrics) -> None:
        self.is_ready = True
        self.metrics = metrics
        self.submitted: list[tuple[bytes, bytes | None]] = []
        self.reads: list[tuple[bytes, bytes, bytes | None]] = []

    def ready(self) -> bool:
        return self.is_ready

    def status(self) -> NodeStatus:
        return NodeStatus(
            chain_id="test-chain",
            node_id=b"\x01" * 32,
            height=5,
            view=2,
            primary=b"\x02" * 32,
            validators=[b"\x01" * 32, b"\x02" * 32],
            peers=1,
            state_root=b"\xaa" * 32,
            extra={"mempool_txs": 3},
        )

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    def _one(self, tx: bytes, blob: bytes | None) -> bytes:
        if tx == b"full":
            raise MempoolFullError("full")
        if tx == b"dup":
            raise AlreadyKnownError(h(tx))
        if tx == b"badsig":
            raise BadSignatureError("bad signature")
        if tx == b"gap":
            raise NonceGapError("gap")
        if tx == b"boom":
            raise RuntimeError(f"exploded on {SECRET}")
        self.submitted.append((tx, blob))
        return h(tx)

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        return self._one(tx, blob)

    async def submit_batch(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> Sequence[bytes | LedgerError]:
        out: list[bytes | LedgerError] = []
        for tx, blob in items:
            try:
                out.append(self._one(tx, blob))
            except LedgerError as exc:
                out.append(exc)
        return out

    async def account(self, key: bytes) -> AccountView:
        if key != b"\x07" * 32:
            raise NotFoundError("no identity is registered under that key")
        return AccountView(key, "organisation", key, nonce=4, next_nonce=6)

    async def tx_status(self, tx_hash: bytes, prove: bool) -> TxStatus:
        if tx_hash == b"\x00" * 32:
            return TxStatus(tx_hash, "unknown")
        proof = InclusionProof(tx_hash, 3, 10, [b"\x05" * 32]) if prove else None
        return TxStatus(tx_hash, "committed", height=4, index=3, code="OK", proof=proof)

    async def block(self, height: int | None) -> BlockView:
        if height not in (None, 5):
            raise NotFoundError(f"no block at height {height}")
        header = BlockHeader(
            chain_id="test-chain",
            height=5,
            time_ms=1000,
            parent_hash=b"\x00" * 32,
            tx_count=1,
            tx_root=b"\x01" * 32,
            state_root=b"\x02" * 32,
            proposer=b"\x03" * 32,
        )
        return BlockView(5, header.hash(), header, [b"\x04" * 32], {"signatures": []})

    async def read_record(self, record_id: bytes, reader: bytes, access_tx: bytes | None) -> object:
        if record_id == b"\xee" * 16:
            raise ErasedError("record was erased")
        if reader == b"\x00" * 32:
            raise UnauthorizedError("no")
        self.reads.append((record_id, reader, access_tx))
        return {"record_id": record_id, "ciphertext": b"\x99" * 4, "wrap": b"\x98" * 2}

    async def patient_audit(self, patient: bytes, reader: bytes) -> object:
        return {"patient": patient, "entries": []}

    async def evidence(self, limit: int, before: int | None) -> object:
        return {"retained": 0, "next_before": None, "evidence": []}


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def facade(metrics: NodeMetrics) -> FakeFacade:
    return FakeFacade(metrics)


@pytest.fixture
async def client(facade: FakeFacade, metrics: NodeMetrics) -> AsyncIterator[httpx.AsyncClient]:
    settings = ApiSettings(max_body_bytes=4096, max_batch_body_bytes=8192, max_batch_txs=5)
    app = create_app(facade, settings, metrics=metrics, clock_ms=lambda: NOW_MS)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
        yield c


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    code: str = body["error"]["code"]
    return code


# --- health, status, metrics, openapi ------------------------------------------------------


async def test_health_and_ready(client: httpx.AsyncClient, facade: FakeFacade) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/ready")).json() == {"ready": True}
    facade.is_ready = False
    r = await client.get("/ready")
    assert r.status_code == 503 and error_code(r) == "NOT_READY"


async def test_status_renders_hex(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/status")).json()
    assert body["chain_id"] == "test-chain"
    assert body["node_id"] == "01" * 32 and body["validators"] == ["01" * 32, "02" * 32]
    assert body["height"] == 5 and body["view"] == 2 and body["extra"] == {"mempool_txs": 3}


async def test_openapi_lists_every_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.content)
    expected = {
        "/health",
        "/ready",
        "/metrics",
        "/v1/status",
        "/v1/txs",
        "/v1/txs/batch",
        "/v1/txs/{tx_hash}",
        "/v1/accounts/{key}",
        "/v1/blocks/latest",
        "/v1/blocks/{height}",
        "/v1/records/{record_id}",
        "/v1/patients/{patient_id}/audit",
        "/v1/evidence",
    }
    assert set(doc["paths"]) == expected
    assert "requestBody" in doc["paths"]["/v1/txs"]["post"]


# (path, parameter, the byte sizes the handler's parse_hex accepts)
HEX_PARAMS = [
    ("/v1/accounts/{key}", "key", range(32, 33)),
    ("/v1/txs/{tx_hash}", "tx_hash", range(32, 33)),
    ("/v1/records/{record_id}", "record_id", range(16, 33)),
    ("/v1/records/{record_id}", "access", range(32, 33)),
    ("/v1/patients/{patient_id}/audit", "patient_id", range(32, 33)),
]


async def test_openapi_states_the_hex_shape_of_every_id(client: httpx.AsyncClient) -> None:
    doc = json.loads((await client.get("/openapi.json")).content)
    for path, name, sizes in HEX_PARAMS:
        (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
        schema = param["schema"]
        if "anyOf" in schema:  # an optional query parameter: string | null
            schema = next(s for s in schema["anyOf"] if s.get("type") == "string")
        assert schema["minLength"] == 2 * sizes.start, (path, name)
        assert schema["maxLength"] == 2 * (sizes.stop - 1), (path, name)
        for n in (sizes.start - 1, sizes.start, sizes.stop - 1, sizes.stop):
            for value in ("ab" * n, "AB" * n, "ab" * n + "a"):
                agrees = re.fullmatch(schema["pattern"].strip("^$"), value) is not None
                assert agrees == (n in sizes and value.islower() and len(value) % 2 == 0)
    body = doc["paths"]["/v1/txs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["tx"]["pattern"] == "^(?:[0-9a-f]{2})*$"
    height = doc["paths"]["/v1/blocks/{height}"]["get"]["parameters"][0]["schema"]
    assert height["pattern"] == "^[0-9]{1,19}$"


@given(value=st.text(alphabet="0123456789abcdefABx", max_size=70))
def test_hex_patterns_accept_exactly_what_parse_hex_accepts(value: str) -> None:
    for sizes in (range(32, 33), range(16, 33)):
        pattern = hex_pattern(sizes.start, sizes.stop - 1)
        try:
            parse_hex(value, "id", sizes=sizes)
            parsed = True
        except LedgerError:
            parsed = False
        assert (re.fullmatch(pattern.strip("^$"), value) is not None) == parsed
    assert (re.fullmatch(HEX_BYTES_PATTERN.strip("^$"), value) is not None) == _parses(value)


def _parses(value: str) -> bool:
    try:
        parse_hex(value, "tx")
    except LedgerError:
        return False
    return True


async def test_a_malformed_id_is_refused_naming_the_parameter(client: httpx.AsyncClient) -> None:
    for target, name in (
        ("/v1/accounts/" + "AB" * 32, "key"),
        ("/v1/txs/" + "ab" * 31, "tx_hash"),
        ("/v1/blocks/12x", "height"),
        ("/v1/records/" + "ab" * 16 + "?access=" + SECRET, "access"),
    ):
        r = await client.get(target)
        assert r.status_code == 400 and error_code(r) == "MALFORMED", target
        message = r.json()["error"]["message"]
        assert message.endswith(f": {name}") and SECRET not in message, message


async def test_metrics_parse_and_count_requests(
    client: httpx.AsyncClient, metrics: NodeMetrics
) -> None:
    await client.get("/health")
    await client.post("/v1/txs", content=b"{")
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert "medledger_consensus_height" in families
    samples = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["medledger_api_requests"].samples
        if s.name == "medledger_api_requests_total"
    }
    assert samples[("/health", "200")] == 1
    assert samples[("/v1/txs", "400")] == 1
    for family in families.values():
        assert family.name.startswith("medledger_")


# --- submitting --------------------------------------------------------------------------------


async def test_submit_accepts_hex(client: httpx.AsyncClient, facade: FakeFacade) -> None:
    r = await client.post("/v1/txs", json={"tx": "0102", "blob": "ff"})
    assert r.status_code == 202
    assert r.json() == {"hash": h(b"\x01\x02").hex()}
    assert facade.submitted == [(b"\x01\x02", b"\xff")]
    r = await client.post("/v1/txs", json={"tx": "0a"})
    assert r.status_code == 202 and facade.submitted[-1] == (b"\x0a", None)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"[]",
        b'{"tx": 5}',
        b'{"tx": "0G"}',
        b'{"tx": "ABCD"}',  # hex must be lowercase
        b'{"tx": "abc"}',  # odd length
        b'{"tx": "ab", "extra": 1}',
        b'{"blob": "ab"}',
        b"\xff\xfe",
    ],
)
async def test_malformed_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    r = await client.post("/v1/txs", content=body)
    assert r.status_code == 400
    assert error_code(r) == "MALFORMED"


async def test_oversized_is_413_before_parsing(client: httpx.AsyncClient) -> None:
    big = b'{"tx": "' + b"00" * 4096 + b'"}'
    r = await client.post("/v1/txs", content=big)
    assert r.status_code == 413 and error_code(r) == "TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted while reading
        for _ in range(10):
            yield b"x" * 1000

    r = await client.post("/v1/txs", content=chunks())
    assert r.status_code == 413 and error_code(r) == "TOO_LARGE"


@pytest.mark.parametrize(
    ("tx", "status", "code"),
    [
        (b"full", 503, "MEMPOOL_FULL"),
        (b"badsig", 422, "BAD_SIGNATURE"),
        (b"gap", 409, "NONCE_GAP"),
    ],
)
async def test_typed_errors(client: httpx.AsyncClient, tx: bytes, status: int, code: str) -> None:
    r = await client.post("/v1/txs", json={"tx": tx.hex()})
    assert r.status_code == status
    assert error_code(r) == code


async def test_duplicate_is_idempotent(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/txs", json={"tx": b"dup".hex()})
    assert r.status_code == 202
    assert r.json() == {"hash": h(b"dup").hex(), "duplicate": True}


async def test_unexpected_error_is_500_without_details(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="node.api.app"):
        r = await client.post("/v1/txs", json={"tx": b"boom".hex()})
    assert r.status_code == 500
    assert error_code(r) == "INTERNAL"
    assert SECRET not in r.text and "Traceback" not in r.text
    assert any("RuntimeError" in rec.getMessage() for rec in caplog.records)
    assert all(SECRET not in rec.getMessage() for rec in caplog.records)


async def test_batch_has_per_tx_results(client: httpx.AsyncClient) -> None:
    txs = [b"\x01", b"full", b"dup", b"badsig"]
    r = await client.post("/v1/txs/batch", json={"txs": [{"tx": t.hex()} for t in txs]})
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 2
    results = body["results"]
    assert results[0] == {"hash": h(b"\x01").hex()}
    assert results[1]["error"]["code"] == "MEMPOOL_FULL"
    assert results[2] == {"hash": h(b"dup").hex(), "duplicate": True}
    assert results[3]["error"]["code"] == "BAD_SIGNATURE"
    r = await client.post("/v1/txs/batch", json={"txs": [{"tx": "00"}] * 6})
    assert r.status_code == 413 and error_code(r) == "TOO_LARGE"
    r = await client.post("/v1/txs/batch", json={"txs": [{"tx": "0"}]})
    assert r.status_code == 400


# --- queries ------------------------------------------------------------------------------------


async def test_account(client: httpx.AsyncClient) -> None:
    key = "07" * 32
    body = (await client.get(f"/v1/accounts/{key}")).json()
    assert body == {
        "key": key,
        "kind": "organisation",
        "org": key,
        "nonce": 4,
        "next_nonce": 6,
    }
    r = await client.get(f"/v1/accounts/{'08' * 32}")
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = await client.get("/v1/accounts/0708")
    assert r.status_code == 400 and error_code(r) == "MALFORMED"


async def test_tx_status(client: httpx.AsyncClient) -> None:
    txh = "ab" * 32
    body = (await client.get(f"/v1/txs/{txh}")).json()
    assert body == {
        "hash": txh,
        "status": "committed",
        "height": 4,
        "index": 3,
        "code": "OK",
        "proof": None,
    }
    body = (await client.get(f"/v1/txs/{txh}?prove=true")).json()
    assert body["proof"] == {"leaf": txh, "index": 3, "tree_size": 10, "path": ["05" * 32]}
    assert (await client.get(f"/v1/txs/{'00' * 32}")).json()["status"] == "unknown"
    r = await client.get("/v1/txs/abc")
    assert r.status_code == 400 and error_code(r) == "MALFORMED"
    r = await client.get(f"/v1/txs/{txh}?prove=maybe")
    assert r.status_code == 400 and error_code(r) == "MALFORMED"


async def test_blocks(client: httpx.AsyncClient) -> None:
    latest = (await client.get("/v1/blocks/latest")).json()
    assert latest["height"] == 5 and latest["tx_hashes"] == ["04" * 32]
    assert latest["header"]["chain_id"] == "test-chain"
    assert latest["header"]["parent_hash"] == "00" * 32
    assert (await client.get("/v1/blocks/5")).json() == latest
    r = await client.get("/v1/blocks/6")
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = await client.get("/v1/blocks/-1")
    assert r.status_code == 400 and error_code(r) == "MALFORMED"


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/nothing")
    assert r.status_code == 404 and error_code(r) == "NOT_FOUND"
    r = await client.delete("/v1/txs")
    assert r.status_code == 405 and error_code(r) == "METHOD_NOT_ALLOWED"
    for method in ("BREW", "WHEN"):  # client-chosen methods do not become label values
        r = await client.request(method, "/v2/x")
        assert r.status_code == 404


async def test_metric_labels_stay_bounded(client: httpx.AsyncClient, metrics: NodeMetrics) -> None:
    for n in range(3):
        await client.request("BREW", f"/v2/pot/{n}")
        await client.get(f"/v1/txs/{n:064x}")
    get = metrics.registry.get_sample_value
    labels = {"route": "unmatched", "method": "OTHER", "status": "404"}
    assert get("medledger_api_requests_total", labels) == 3
    labels = {"route": "/v1/txs/{tx_hash}", "method": "GET", "status": "200"}
    assert get("medledger_api_requests_total", labels) == 3


# --- signed reads -------------------------------------------------------------------------------

READER = KeyPair.from_seed(b"\x07" * 32)
RECORD = "cd" * 16


async def signed_get(
    client: httpx.AsyncClient,
    url: str,
    *,
    key: KeyPair = READER,
    timestamp_ms: int = NOW_MS,
    sign_target: str | None = None,
) -> httpx.Response:
    request = client.build_request("GET", url)
    target = sign_target if sign_target is not None else request.url.raw_path.decode()
    request.headers.update(sign_request(key, "GET", target, b"", timestamp_ms=timestamp_ms))
    return await client.send(request)


async def test_signed_read_accepted(client: httpx.AsyncClient, facade: FakeFacade) -> None:
    access = "ef" * 32
    r = await signed_get(client, f"/v1/records/{RECORD}?access={access}")
    assert r.status_code == 200, r.text
    assert r.json() == {"record_id": RECORD, "ciphertext": "99" * 4, "wrap": "98" * 2}
    assert facade.reads == [(bytes.fromhex(RECORD), READER.public_key, bytes.fromhex(access))]
    r = await signed_get(client, f"/v1/patients/{'11' * 32}/audit", timestamp_ms=NOW_MS - 59_000)
    assert r.status_code == 200 and r.json()["patient"] == "11" * 32


async def test_signed_read_stale_or_future_refused(client: httpx.AsyncClient) -> None:
    r = await signed_get(client, f"/v1/records/{RECORD}", timestamp_ms=NOW_MS - 61_000)
    assert r.status_code == 401 and error_code(r) == "STALE_REQUEST"
    r = await signed_get(client, f"/v1/records/{RECORD}", timestamp_ms=NOW_MS + 60_000)
    assert r.status_code == 401 and error_code(r) == "STALE_REQUEST"


async def test_signed_read_replay_refused(client: httpx.AsyncClient, facade: FakeFacade) -> None:
    request = client.build_request("GET", f"/v1/records/{RECORD}")
    request.headers.update(
        sign_request(READER, "GET", request.url.raw_path.decode(), timestamp_ms=NOW_MS)
    )
    assert (await client.send(request)).status_code == 200
    r = await client.send(request)
    assert r.status_code == 401 and error_code(r) == "REPLAYED_REQUEST"
    assert len(facade.reads) == 1


async def test_signed_read_wrong_signature_refused(
    client: httpx.AsyncClient, facade: FakeFacade
) -> None:
    # signed for another record: the signature does not cover this target
    r = await signed_get(client, f"/v1/records/{RECORD}", sign_target=f"/v1/records/{'ab' * 16}")
    assert r.status_code == 401 and error_code(r) == "BAD_REQUEST_SIGNATURE"
    # signed by another key than the one claimed
    request = client.build_request("GET", f"/v1/records/{RECORD}")
    headers = sign_request(READER, "GET", request.url.raw_path.decode(), timestamp_ms=NOW_MS)
    headers["x-medledger-key"] = KeyPair.from_seed(b"\x08" * 32).public_key.hex()
    request.headers.update(headers)
    r = await client.send(request)
    assert r.status_code == 401 and error_code(r) == "BAD_REQUEST_SIGNATURE"
    r = await client.get(f"/v1/records/{RECORD}")  # unsigned
    assert r.status_code == 401 and error_code(r) == "UNAUTHENTICATED"
    assert facade.reads == []


async def test_signed_read_rule_errors(client: httpx.AsyncClient) -> None:
    r = await signed_get(client, f"/v1/records/{'ee' * 16}")
    assert r.status_code == 410 and error_code(r) == "ERASED"
    r = await signed_get(client, "/v1/records/abcd")  # id too short
    assert r.status_code == 400 and error_code(r) == "MALFORMED"


def test_replay_cache_expires_and_is_bounded() -> None:
    cache = ReplayCache(capacity=2)
    cache.check_and_add(b"a", expires_ms=100, now_ms=0)
    with pytest.raises(ReplayedRequestError):
        cache.check_and_add(b"a", expires_ms=100, now_ms=50)
    cache.check_and_add(b"b", expires_ms=150, now_ms=50)
    with pytest.raises(ReplayCacheFullError):
        cache.check_and_add(b"c", expires_ms=160, now_ms=60)
    cache.check_and_add(b"c", expires_ms=200, now_ms=100)  # "a" expired
    assert len(cache) == 2


# --- the real server ---------------------------------------------------------------------


async def test_real_hypercorn_server(facade: FakeFacade, metrics: NodeMetrics) -> None:
    app = create_app(facade, metrics=metrics)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_api, app, ServerSettings(port=0))
        url = binds[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/health")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            r = await c.post("/v1/txs", content=b"not json")
            assert r.status_code == 400 and error_code(r) == "MALFORMED"
            r = await c.post("/v1/txs", content=b"x" * (9 * 1024 * 1024))
            assert r.status_code == 413 and error_code(r) == "TOO_LARGE"
            # a signed read over real sockets: the target hypercorn reports is the signed one
            request = c.build_request("GET", f"/v1/records/{RECORD}?access={'ef' * 32}")
            request.headers.update(sign_request(READER, "GET", request.url.raw_path.decode()))
            r = await c.send(request)
            assert r.status_code == 200, r.text
            assert (await c.get("/health")).status_code == 200  # still serving
        nursery.cancel_scope.cancel()


def test_settings_from_node_config() -> None:
    cfg = node_config.Config()
    api = ApiSettings.from_config(cfg)
    assert api.max_body_bytes == cfg.api.max_body_bytes
    assert api.signed_read_max_age_s == cfg.api.signed_read_max_age_s
    server = ServerSettings.from_config(cfg)
    assert (server.host, server.port) == (cfg.api.listen.host, cfg.api.listen.port)


# --- through a real mempool with the real ledger checks -------------------------------------


class MempoolFacade(FakeFacade):
    """The fake, except that submissions go through a real Mempool + LedgerTxChecker."""

    def __init__(self, metrics: NodeMetrics, mempool: Mempool) -> None:
        super().__init__(metrics)
        self.mempool = mempool

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        return await self.mempool.submit(tx, blob)

    async def submit_batch(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> Sequence[bytes | LedgerError]:
        return await self.mempool.submit_many(items)


async def test_submissions_through_a_real_mempool() -> None:
    metrics = NodeMetrics()
    mempool, _ = real_pool(metrics)
    mempool = Mempool(mempool._checker, MempoolSettings(max_txs=3), metrics=metrics)
    app = create_app(MempoolFacade(metrics, mempool), metrics=metrics)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://node"
    ) as c:
        good = [mempool_tx(100, n, patient=n) for n in range(4)]
        r = await c.post("/v1/txs", json={"tx": good[0].hex()})
        assert r.status_code == 202 and r.json() == {"hash": tx_hash(good[0]).hex()}
        r = await c.post("/v1/txs/batch", json={"txs": [{"tx": d.hex()} for d in good]})
        body = r.json()
        assert [res.get("duplicate") for res in body["results"][:1]] == [True]
        assert [res["error"]["code"] for res in body["results"][3:]] == ["MEMPOOL_FULL"]
        assert body["accepted"] == 3
        r = await c.post("/v1/txs", json={"tx": good[3].hex()})
        assert r.status_code == 503 and error_code(r) == "MEMPOOL_FULL"
        forged = good[3][:-64] + bytes(64)
        r = await c.post("/v1/txs", json={"tx": forged.hex()})
        assert r.status_code == 503  # full: refused before spending a verification
        mempool.update(1, [tx_hash(good[0])])
        r = await c.post("/v1/txs", json={"tx": forged.hex()})
        assert r.status_code == 422 and error_code(r) == "BAD_SIGNATURE"
        r = await c.post("/v1/txs", json={"tx": "00ff"})
        assert r.status_code == 400 and error_code(r) == "MALFORMED"
        r = await c.post("/v1/txs", json={"tx": mempool_tx(5, 0).hex()})
        assert r.status_code == 403 and error_code(r) == "UNKNOWN_SENDER"
        r = await c.post("/v1/txs", json={"tx": good[1].hex()})  # still pending
        assert r.status_code == 202 and r.json()["duplicate"] is True
        r = await c.post("/v1/txs", json={"tx": mempool_tx(100, 1, patient=9).hex()})
        assert r.status_code == 409 and error_code(r) == "NONCE_PENDING"


async def test_batch_path_answers_405_to_other_methods(client: httpx.AsyncClient) -> None:
    """``/v1/txs/batch`` is POST only; a GET must not fall through to ``/v1/txs/{tx_hash}``."""
    for method in ("GET", "DELETE", "TRACE"):
        r = await client.request(method, "/v1/txs/batch")
        assert r.status_code == 405 and r.headers["allow"] == "POST", method
