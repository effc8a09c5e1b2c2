"""The node's HTTP API as an ASGI app (FastAPI), talking to the node only via a facade.

Every route handler runs inside one wrapper (:class:`_Route`) that turns typed
errors into the JSON error shape, answers anything unexpected with a bare
500 ``INTERNAL`` (the traceback goes to the log, never to the client, and
the log line carries no exception message, which could quote a payload), and
counts the request by route template, method and status.

Bodies are read with a size limit enforced while reading, before anything is
parsed: the ``Content-Length`` header is checked first, then the bytes as they
arrive. A body must arrive whole within ``body_timeout_s`` (408
``REQUEST_TIMEOUT``, then the connection is closed): a client that trickles
a body a byte at a time would otherwise hold a connection and its share of
the body budget for ever (the server's own timeouts, see
:mod:`node.api.server`, cover idle connections and slow headers). The bytes
every request holds count against one node-wide
:class:`~node.api.budget.BodyBudget` until its handler has answered, so many
concurrent large bodies are refused (503 ``BUSY``) rather than buffered.
JSON is decoded by msgspec into strict structures; hex must be lowercase, as
everywhere in the API. Answers that can be large (a record's ciphertext of up
to 4 MiB becomes 8 MiB of hex; an audit log; evidence with whole blocks) are
rendered to JSON in a worker thread: the event loop is shared with consensus.

Hex path and query parameters carry their ``pattern`` and lengths in the
OpenAPI description (and FastAPI checks them: 400 ``MALFORMED`` naming the
parameter, never echoing it), so clients and schema-driven fuzzers see the
exact shape the handlers demand; the handlers still parse with
:func:`parse_hex`, which stays the one authority on sizes.
"""

from __future__ import annotations

import logging
import math
import re
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import trio
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ledger.errors import DecodeError, LedgerError, TooLargeError
from node.api.auth import ReplayCache, verify_signed_request
from node.api.budget import BodyBudget
from node.api.errors import RequestTimeoutError, error_response, ledger_error_response
from node.api.facade import NodeFacade
from node.api.render import json_bytes
from node.client import now_ms
from node.mempool import AlreadyKnownError
from node.metrics import CONTENT_TYPE_LATEST, NodeMetrics, NoopMetrics

if TYPE_CHECKING:
    from node.config import Config

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]*")
HASH_SIZE = 32

# --- the shapes of hex parameters, as the OpenAPI description states them ----------------

#: Lowercase hex of whole bytes, any length (tx and blob bodies).
HEX_BYTES_PATTERN = r"^(?:[0-9a-f]{2})*$"


def hex_pattern(min_bytes: int, max_bytes: int | None = None) -> str:
    """Anchored pattern of lowercase hex for ``min_bytes``..``max_bytes`` bytes."""
    hi = min_bytes if max_bytes is None else max_bytes
    if hi == min_bytes:
        return f"^[0-9a-f]{{{2 * min_bytes}}}$"
    return f"^(?:[0-9a-f]{{2}}){{{min_bytes},{hi}}}$"


def _hex_param(
    where: type[Any], description: str, min_bytes: int, max_bytes: int | None = None
) -> Any:
    hi = min_bytes if max_bytes is None else max_bytes
    return where(
        description=description,
        pattern=hex_pattern(min_bytes, hi),
        min_length=2 * min_bytes,
        max_length=2 * hi,
    )


KeyPath = Annotated[str, _hex_param(Path, "ed25519 public key, 32 bytes as lowercase hex", 32)]
TxHashPath = Annotated[str, _hex_param(Path, "tx hash, 32 bytes as lowercase hex", HASH_SIZE)]
RecordIdPath = Annotated[
    str, _hex_param(Path, "record id, 16 to 32 bytes as lowercase hex", 16, 32)
]
PatientPath = Annotated[str, _hex_param(Path, "patient public key, 32 bytes as lowercase hex", 32)]
AccessQuery = Annotated[
    str | None,
    _hex_param(Query, "hash of the committed RecordAccess tx, 32 bytes as lowercase hex", 32),
]
HeightPath = Annotated[
    str,
    Path(
        description="block height, a non-negative decimal integer",
        pattern=r"^[0-9]{1,19}$",
        min_length=1,
        max_length=19,
    ),
]


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Limits of the API; the node maps its ``[api]`` config onto these."""

    max_body_bytes: int = 8 * 1024 * 1024  # one tx + blob, hex in JSON
    max_batch_body_bytes: int = 32 * 1024 * 1024
    max_batch_txs: int = 5000
    #: Request-body bytes held at once by all requests together (see ``BodyBudget``).
    max_inflight_body_bytes: int = 64 * 1024 * 1024
    #: Submissions processed at once; more wait in line (see ``create_app``).
    max_concurrent_writes: int = 4
    signed_read_max_age_s: float = 60.0
    signed_read_max_skew_s: float = 5.0  # how far in the future a timestamp may be
    replay_cache_size: int = 100_000
    #: A request body must arrive whole within this time, counted from its headers.
    body_timeout_s: float = 30.0
    #: Worker threads rendering large answers to JSON at once.
    render_threads: int = 2

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        return cls(
            max_body_bytes=config.api.max_body_bytes,
            max_batch_body_bytes=max(config.api.max_body_bytes, 32 * 1024 * 1024),
            signed_read_max_age_s=config.api.signed_read_max_age_s,
            body_timeout_s=config.api.body_timeout_s,
        )


# --- request bodies ---------------------------------------------------------------------


class TxIn(msgspec.Struct, forbid_unknown_fields=True):
    tx: str
    blob: str | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    txs: list[TxIn]


_TX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tx"],
    "additionalProperties": False,
    "properties": {
        "tx": {
            "type": "string",
            "pattern": HEX_BYTES_PATTERN,
            "description": "canonical tx bytes, lowercase hex",
        },
        "blob": {
            "type": ["string", "null"],
            "pattern": HEX_BYTES_PATTERN,
            "description": "sidecar blob, lowercase hex (AnchorRecord, KeyRelease)",
        },
    },
}
_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["txs"],
    "additionalProperties": False,
    "properties": {"txs": {"type": "array", "items": _TX_SCHEMA}},
}


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


_ERROR_DOC = {"description": 'typed error: {"error": {"code", "message"}}'}
_SIGNED_DOC = (
    "Signed read: headers x-medledger-key (reader public key, hex), "
    "x-medledger-timestamp (Unix ms) and x-medledger-signature (ed25519 over "
    "SIGN_API_REQUEST || encode(method, path?query, sha256(body), timestamp); "
    "see node.client.sign_request). Stale or replayed requests are refused (401)."
)


def parse_hex(
    value: str, what: str, *, size: int | None = None, sizes: range | None = None
) -> bytes:
    """Lowercase, even-length hex (with an optional exact size or size range) or ``DecodeError``."""
    if len(value) % 2 or not _HEX.fullmatch(value):
        raise DecodeError(f"{what}: expected lowercase hex")
    n = len(value) // 2
    if size is not None and n != size:
        raise DecodeError(f"{what}: expected {size} bytes")
    if sizes is not None and n not in sizes:
        raise DecodeError(f"{what}: expected {sizes.start}..{sizes.stop - 1} bytes")
    return bytes.fromhex(value)


#: Most evidence entries one ``GET /v1/evidence`` page may ask for.
MAX_EVIDENCE_PAGE = 100

#: Where a request records the body bytes it holds of the budget (released by ``_Route``).
_RESERVED = "medledger.body_bytes_reserved"


async def read_body(
    request: Request,
    limit: int,
    budget: BodyBudget | None = None,
    *,
    timeout_s: float = math.inf,
) -> bytes:
    """The request body, refused with ``TooLargeError`` as soon as it passes ``limit``.

    With a ``budget``, every chunk is reserved as it arrives (``BusyError``
    when the budget is spent) and recorded in the request's scope; whoever
    drives the handler releases it (``_Route`` does, after the answer).
    The whole body must arrive within ``timeout_s`` (``RequestTimeoutError``).
    """
    try:
        with trio.fail_after(timeout_s):
            return await _read_body(request, limit, budget)
    except trio.TooSlowError:
        raise RequestTimeoutError(f"request body not received within {timeout_s:g} s") from None


async def _read_body(request: Request, limit: int, budget: BodyBudget | None) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise DecodeError("content-length: not a number")
        if int(declared) > limit:
            raise TooLargeError(f"body of {declared} bytes exceeds limit of {limit}")
        if budget is not None:
            budget.check_room(int(declared))  # cannot fit: refused before a byte is read
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(f"body exceeds limit of {limit} bytes")
        if budget is not None:
            budget.reserve(len(chunk))
            request.scope[_RESERVED] = request.scope.get(_RESERVED, 0) + len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode_json(body: bytes, type_: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.DecodeError as exc:  # includes ValidationError
        raise DecodeError(f"malformed JSON body: {_short(str(exc))}") from None
    except UnicodeDecodeError:  # msgspec raises it bare for a JSON string that is not UTF-8
        raise DecodeError("malformed JSON body: a string is not valid UTF-8") from None


def _short(message: str) -> str:
    return message if len(message) <= 120 else message[:117] + "..."


def _tx_item(item: TxIn) -> tuple[bytes, bytes | None]:
    tx = parse_hex(item.tx, "tx")
    blob = parse_hex(item.blob, "blob") if item.blob is not None else None
    return tx, blob


def json_response(value: object, status: int = 200) -> Response:
    return Response(json_bytes(value), status_code=status, media_type="application/json")


async def json_response_off_loop(value: object, limiter: trio.CapacityLimiter) -> Response:
    """:func:`json_response` rendered in a worker thread (hex and JSON of megabytes)."""
    body = await trio.to_thread.run_sync(json_bytes, value, limiter=limiter)
    return Response(body, status_code=200, media_type="application/json")


# --- the route wrapper --------------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """A closed set for the metrics label: clients choose the method string."""
    return method if method in _METHODS else "OTHER"


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _route_class(metrics: NodeMetrics, budget: BodyBudget) -> type[APIRoute]:
    class _Route(APIRoute):
        """Typed errors -> JSON, unexpected errors -> logged 500, every request counted,
        the request's share of the body budget released once it is answered."""

        def get_route_handler(self) -> Handler:
            handler = super().get_route_handler()
            route = self.path_format

            async def wrapped(request: Request) -> Response:
                start = time.perf_counter()
                try:
                    response = await handler(request)
                except LedgerError as exc:
                    response = ledger_error_response(exc)
                    if isinstance(exc, RequestTimeoutError):
                        response.headers["connection"] = "close"
                except RequestValidationError as exc:
                    response = _validation_error(exc)
                except StarletteHTTPException as exc:
                    response = _http_error(exc)
                except Exception as exc:  # noqa: BLE001 - logged below, answered 500, never silent
                    log.error(
                        "unexpected %s in %s %s\n%s",
                        type(exc).__name__,
                        request.method,
                        route,
                        "".join(traceback.format_tb(exc.__traceback__)),
                    )
                    response = error_response(500, "INTERNAL", "internal error")
                finally:
                    budget.release(request.scope.pop(_RESERVED, 0))
                metrics.api_requests.labels(
                    route, method_label(request.method), str(response.status_code)
                ).inc()
                metrics.api_latency.labels(route).observe(time.perf_counter() - start)
                return response

            return wrapped

    return _Route


def _validation_error(exc: RequestValidationError) -> Response:
    """400 naming the parameter(s) FastAPI refused; never the value (it may be anything)."""
    names = sorted(
        {
            str(err["loc"][-1])
            for err in exc.errors()
            if isinstance(err, dict) and err.get("loc") and err["loc"][0] in ("path", "query")
        }
    )
    detail = f": {', '.join(names)}" if names else ""
    return error_response(400, "MALFORMED", f"invalid path or query parameter{detail}")


def _http_error(exc: StarletteHTTPException) -> Response:
    codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
    code = codes.get(exc.status_code, f"HTTP_{exc.status_code}")
    response = error_response(exc.status_code, code, str(exc.detail))
    response.headers.update(exc.headers or {})  # e.g. the Allow header of a 405 (RFC 9110)
    return response


# --- the app --------------------------------------------------------------------------------


def create_app(
    facade: NodeFacade,
    settings: ApiSettings | None = None,
    *,
    metrics: NodeMetrics | None = None,
    clock_ms: Callable[[], int] = now_ms,
) -> FastAPI:
    """The ASGI app of one node. ``clock_ms`` (wall clock) only judges signed-read freshness."""
    s = settings or ApiSettings()
    m = metrics if metrics is not None else NoopMetrics()
    replay = ReplayCache(s.replay_cache_size)
    max_age_ms = int(s.signed_read_max_age_s * 1000)
    max_skew_ms = int(s.signed_read_max_skew_s * 1000)

    app = FastAPI(
        title="medledger node API",
        version="1",
        description=(
            "HTTP API of one medledger node. Keys, hashes and ids are lowercase hex; "
            'errors are {"error": {"code": "UPPER_SNAKE", "message": "..."}}.'
        ),
        docs_url=None,  # the interactive pages load scripts from a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    budget = BodyBudget(s.max_inflight_body_bytes)
    app.router.route_class = _route_class(m, budget)
    # Submissions (decoding, signature checks) are processed at most this many
    # at a time, first come first served, once their bodies are in. The API
    # shares the node's one event loop with consensus: sixteen clients posting
    # at once left the replica so few turns that its node fell views behind
    # and the network stopped committing.
    writers = trio.CapacityLimiter(s.max_concurrent_writes)
    renderers = trio.CapacityLimiter(s.render_threads)

    @app.exception_handler(StarletteHTTPException)
    async def _unrouted(request: Request, exc: StarletteHTTPException) -> Response:
        m.api_requests.labels("unmatched", method_label(request.method), str(exc.status_code)).inc()
        return _http_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return _validation_error(exc)

    async def signed_reader(request: Request) -> bytes:
        body = await read_body(request, s.max_body_bytes, budget, timeout_s=s.body_timeout_s)
        target = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        if query:
            target = target + b"?" + query
        try:
            target_str = target.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("request target: not ASCII") from None
        reader = verify_signed_request(
            request.headers,
            request.method,
            target_str,
            body,
            now_ms=clock_ms(),
            max_age_ms=max_age_ms,
            max_skew_ms=max_skew_ms,
            replay=replay,
        )
        return reader

    @app.get("/health", summary="200 while the process serves")
    async def health() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/ready",
        summary="200 when caught up and connected to a quorum, else 503",
        responses={503: _ERROR_DOC},
    )
    async def ready() -> Response:
        if facade.ready():
            return json_response({"ready": True})
        return error_response(503, "NOT_READY", "not caught up or no quorum")

    @app.get("/metrics", summary="Prometheus text format", response_class=Response)
    async def metrics_route() -> Response:
        return Response(facade.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status", summary="chain, height, view, primary, validators, peers, state root")
    async def status() -> Response:
        return json_response(facade.status())

    @app.post(
        "/v1/txs",
        summary="submit one signed tx (+ optional blob); 202 {hash}",
        status_code=202,
        openapi_extra=_body_doc(_TX_SCHEMA),
        responses={400: _ERROR_DOC, 413: _ERROR_DOC, 422: _ERROR_DOC, 503: _ERROR_DOC},
    )
    async def submit_tx(request: Request) -> Response:
        body = await read_body(request, s.max_body_bytes, budget, timeout_s=s.body_timeout_s)
        async with writers:
            tx, blob = _tx_item(_decode_json(body, TxIn))
            try:
                txh = await facade.submit(tx, blob)
            except AlreadyKnownError as exc:  # idempotent: same answer as the first time
                return json_response({"hash": exc.tx_hash, "duplicate": True}, 202)
        return json_response({"hash": txh}, 202)

    @app.post(
        "/v1/txs/batch",
        summary="submit many txs; one result per tx, in order",
        openapi_extra=_body_doc(_BATCH_SCHEMA),
        responses={400: _ERROR_DOC, 413: _ERROR_DOC, 503: _ERROR_DOC},
    )
    async def submit_batch(request: Request) -> Response:
        body = await read_body(request, s.max_batch_body_bytes, budget, timeout_s=s.body_timeout_s)
        async with writers:
            batch: BatchIn = _decode_json(body, BatchIn)
            if len(batch.txs) > s.max_batch_txs:
                raise TooLargeError(f"batch of {len(batch.txs)} txs exceeds {s.max_batch_txs}")
            items = [_tx_item(item) for item in batch.txs]
            results = await facade.submit_batch(items)
        out: list[dict[str, Any]] = []
        for result in results:
            if isinstance(result, AlreadyKnownError):
                out.append({"hash": result.tx_hash.hex(), "duplicate": True})
            elif isinstance(result, LedgerError):
                out.append({"error": {"code": result.code, "message": result.message}})
            else:
                out.append({"hash": result.hex()})
        accepted = sum(1 for r in out if "hash" in r)
        return json_response(
            {"accepted": accepted, "rejected": len(out) - accepted, "results": out}
        )

    @app.get(
        "/v1/accounts/{key}",
        summary="a registered identity's role and next nonce (committed and with pending txs)",
        responses={400: _ERROR_DOC, 404: _ERROR_DOC},
    )
    async def account(key: KeyPath) -> Response:
        return json_response(await facade.account(parse_hex(key, "key", size=32)))

    @app.api_route(
        "/v1/txs/batch",
        methods=["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"],
        include_in_schema=False,
    )
    async def batch_other_methods() -> Response:
        """Without this, ``GET /v1/txs/batch`` would reach ``/v1/txs/{tx_hash}`` (a 400)."""
        raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})

    @app.get(
        "/v1/txs/{tx_hash}",
        summary="pending | committed (height, index, result code) | unknown",
        responses={400: _ERROR_DOC},
    )
    async def tx_status(tx_hash: TxHashPath, prove: bool = False) -> Response:
        txh = parse_hex(tx_hash, "tx hash", size=HASH_SIZE)
        return json_response(await facade.tx_status(txh, prove))

    @app.get("/v1/blocks/latest", summary="the last committed block", responses={404: _ERROR_DOC})
    async def latest_block() -> Response:
        return json_response(await facade.block(None))

    @app.get(
        "/v1/blocks/{height}",
        summary="{hash, header, tx_hashes, certificate}",
        responses={400: _ERROR_DOC, 404: _ERROR_DOC},
    )
    async def block(height: HeightPath) -> Response:
        if not height.isascii() or not height.isdigit() or len(height) > 19:
            raise DecodeError("height: expected a non-negative integer")
        return json_response(await facade.block(int(height)))

    @app.get(
        "/v1/records/{record_id}",
        summary="signed read: ciphertext + the reader's key wrap, after the audit entry commits",
        description=_SIGNED_DOC,
        responses={
            400: _ERROR_DOC,
            401: _ERROR_DOC,
            403: _ERROR_DOC,
            404: _ERROR_DOC,
            410: _ERROR_DOC,
        },
    )
    async def read_record(
        request: Request, record_id: RecordIdPath, access: AccessQuery = None
    ) -> Response:
        rid = parse_hex(record_id, "record id", sizes=range(16, 33))
        access_tx = parse_hex(access, "access", size=HASH_SIZE) if access is not None else None
        reader = await signed_reader(request)
        return await json_response_off_loop(
            await facade.read_record(rid, reader, access_tx), renderers
        )

    @app.get(
        "/v1/patients/{patient_id}/audit",
        summary="signed read: the patient's access log",
        description=_SIGNED_DOC,
        responses={400: _ERROR_DOC, 401: _ERROR_DOC, 403: _ERROR_DOC, 404: _ERROR_DOC},
    )
    async def patient_audit(request: Request, patient_id: PatientPath) -> Response:
        patient = parse_hex(patient_id, "patient id", size=32)
        reader = await signed_reader(request)
        return await json_response_off_loop(await facade.patient_audit(patient, reader), renderers)

    @app.get(
        "/v1/evidence",
        summary="equivocation evidence this node detected, newest first (paged)",
        description=(
            "Each entry: the equivocating validator, the message kind, view and height, "
            "and both conflicting signed messages as sent (lowercase hex: an encoded "
            "consensus Envelope, or a SignedViewChange for kind ViewChange), with this "
            "node's committed height and wall clock when it saw them. Continue a listing "
            "with ?before=<next_before>. Node-local: each node lists what it detected."
        ),
        responses={400: _ERROR_DOC},
    )
    async def evidence(
        limit: Annotated[
            int, Query(ge=1, le=MAX_EVIDENCE_PAGE, description="entries per page (1..100)")
        ] = 20,
        before: Annotated[
            int | None,
            Query(ge=1, le=2**63 - 1, description="list entries older than this seq"),
        ] = None,
    ) -> Response:
        return await json_response_off_loop(await facade.evidence(limit, before), renderers)

    app.state.replay_cache = replay  # for statistics and tests
    app.state.body_budget = budget
    return app
