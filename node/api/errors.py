"""HTTP status of every typed error, and the one JSON shape of an API error.

The body is always ``{"error": {"code": "UPPER_SNAKE", "message": "..."}}``.
Statuses, by phase of the error (most specific class wins):

=====================================================  ======
malformed JSON, hex or encoding (``DecodeError``)       400
body or tx over a size limit (``TooLargeError``)         413
stateless tx check failed: bad signature, wrong chain,  422
blob mismatch (``InvalidTxError``) - the request was
well formed, the tx in it is not valid
unsigned / stale / replayed / badly signed read          401
sender unknown, not authorised, consent denied           403
unknown id (``NotFoundError``)                           404
erased record (``ErasedError``)                          410
other rule violations (nonce, already exists)            409
request body not received in time (``RequestTimeoutError``) 408
mempool full, too many waiters, node not ready           503
our own disk failed (``CorruptionError``)                500
our own disk refused a write (``StorageIOError``; the   503
node is stopping)
anything unexpected: ``INTERNAL``, logged, no details     500
=====================================================  ======
"""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from ledger.errors import (
    ConsentDeniedError,
    CorruptionError,
    DecodeError,
    EnvelopeError,
    ErasedError,
    InvalidTxError,
    LedgerError,
    NotFoundError,
    NotSupportedError,
    StateRuleError,
    StorageIOError,
    TooLargeError,
    UnauthorizedError,
    UnknownSenderError,
)
from node.api.auth import AuthError, ReplayCacheFullError
from node.api.facade import NotReadyError
from node.mempool import AlreadyKnownError, BusyError, MempoolFullError


class RequestTimeoutError(LedgerError):
    """The client did not send its whole request body within the body timeout (HTTP 408);
    the connection is closed after the answer (a slow sender must not hold it)."""

    code = "REQUEST_TIMEOUT"


# Most specific first: the first matching class decides.
_STATUS: tuple[tuple[type[LedgerError], int], ...] = (
    (RequestTimeoutError, 408),
    (TooLargeError, 413),
    (DecodeError, 400),
    (InvalidTxError, 422),
    (AuthError, 401),
    (ErasedError, 410),
    (NotFoundError, 404),
    (UnknownSenderError, 403),
    (UnauthorizedError, 403),
    (ConsentDeniedError, 403),
    (NotSupportedError, 422),
    (StateRuleError, 409),
    (MempoolFullError, 503),
    (BusyError, 503),
    (ReplayCacheFullError, 503),
    (NotReadyError, 503),
    (AlreadyKnownError, 409),  # only where a duplicate is not idempotent
    (CorruptionError, 500),
    (StorageIOError, 503),
    (EnvelopeError, 400),
)


def status_of(exc: LedgerError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str) -> Response:
    return Response(
        msgspec.json.encode(error_body(code, message)),
        status_code=status,
        media_type="application/json",
    )


def ledger_error_response(exc: LedgerError) -> Response:
    return error_response(status_of(exc), exc.code, exc.message)
