"""Client side of the HTTP API: signing requests for reads of patient data.

A signed read carries three headers: the reader's public key, a timestamp in
milliseconds and an ed25519 signature over

    SIGN_API_REQUEST || encode(SignedRequest(method, target, sha256(body), timestamp_ms))

where ``target`` is the request target exactly as sent: the percent-encoded
path plus ``?query`` when there is one (``httpx.Request.url.raw_path``). The
node refuses a request whose timestamp is outside its age window or whose
signature it has already seen, so a captured request cannot be replayed.

The canonical bytes are built here and nowhere else; the node verifies with
:func:`request_sign_bytes` too, so signer and verifier cannot drift apart.
"""

from __future__ import annotations

import time

from ledger import codec
from ledger.codec import Record
from ledger.hashing import SIGN_API_REQUEST, sha256
from ledger.keys import KeyPair

HEADER_KEY = "x-medledger-key"
HEADER_TIMESTAMP = "x-medledger-timestamp"
HEADER_SIGNATURE = "x-medledger-signature"


class SignedRequest(Record, frozen=True):
    """What a signed read commits to."""

    method: str  # upper case, e.g. "GET"
    target: str  # raw path + "?" + raw query (no "?" without a query)
    body_hash: bytes  # sha256 of the exact body bytes (of b"" for none)
    timestamp_ms: int  # Unix time in milliseconds, the client's clock


def request_sign_bytes(method: str, target: str, body: bytes, timestamp_ms: int) -> bytes:
    """The exact bytes a signed request's signature covers."""
    return SIGN_API_REQUEST + codec.encode(
        SignedRequest(method.upper(), target, sha256(body), timestamp_ms)
    )


def now_ms() -> int:
    """Wall-clock Unix milliseconds: for request freshness only, never for state."""
    return time.time_ns() // 1_000_000


def sign_request(
    key: KeyPair,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The headers that make a request a signed read by ``key``.

    ``target`` is the path and query exactly as they will be sent, e.g.
    ``"/v1/records/ab12?access=cd34"``; with httpx use
    ``request.url.raw_path.decode()``.
    """
    ts = now_ms() if timestamp_ms is None else timestamp_ms
    signature = key.sign(request_sign_bytes(method, target, body, ts))
    return {
        HEADER_KEY: key.public_key.hex(),
        HEADER_TIMESTAMP: str(ts),
        HEADER_SIGNATURE: signature.hex(),
    }
