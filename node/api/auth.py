"""Verifying signed reads: who is asking, and is this request fresh and new.

Sans-IO: :func:`verify_signed_request` takes headers, method, target, body and
the current time, and returns the reader's key or raises a typed
:class:`AuthError`. The signed bytes come from :func:`node.client.request_sign_bytes`,
shared with the signer.

Replay protection: a request is valid only within ``max_age_ms`` of its
timestamp (and at most ``max_skew_ms`` in the future); within that window the
:class:`ReplayCache` remembers every accepted signature, so each signed request
is accepted once. Entries expire with the window, and the cache is bounded:
when full of unexpired entries it refuses new requests (503) rather than
forget one, which would reopen the replay window.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

from ledger.errors import LedgerError
from ledger.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify
from node.client import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, request_sign_bytes


class AuthError(LedgerError):
    """A read that needs a valid request signature did not carry one (HTTP 401)."""

    code = "UNAUTHENTICATED"


class BadRequestSignatureError(AuthError):
    code = "BAD_REQUEST_SIGNATURE"


class StaleRequestError(AuthError):
    """The timestamp is outside the accepted window (too old, or too far ahead)."""

    code = "STALE_REQUEST"


class ReplayedRequestError(AuthError):
    code = "REPLAYED_REQUEST"


class ReplayCacheFullError(LedgerError):
    """Too many signed requests inside one age window: retry later (HTTP 503)."""

    code = "BUSY"


_HEX = re.compile(r"[0-9a-f]*")


class ReplayCache:
    """Signatures seen in the last window, each kept until its request would be stale."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # signature -> expiry (ms)

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, signature: bytes, expires_ms: int, now_ms: int) -> None:
        """Remember ``signature`` until ``expires_ms``; raise if it is already known."""
        self._expire(now_ms)
        if signature in self._seen:
            raise ReplayedRequestError("this signed request was already used")
        if len(self._seen) >= self.capacity:
            raise ReplayCacheFullError("too many signed requests in the current window")
        self._seen[signature] = expires_ms

    def _expire(self, now_ms: int) -> None:
        # Entries are added with expiry = now + window, so insertion order is
        # expiry order (up to wall-clock steps, which only delay a purge).
        while self._seen:
            signature, expires = next(iter(self._seen.items()))
            if expires > now_ms:
                break
            del self._seen[signature]


def _hex_header(headers: Mapping[str, str], name: str, size: int) -> bytes:
    value = headers.get(name)
    if value is None:
        raise AuthError(f"missing header {name}")
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise AuthError(f"header {name}: expected {size} bytes of lowercase hex")
    return bytes.fromhex(value)


def verify_signed_request(
    headers: Mapping[str, str],
    method: str,
    target: str,
    body: bytes,
    *,
    now_ms: int,
    max_age_ms: int,
    max_skew_ms: int,
    replay: ReplayCache,
) -> bytes:
    """Return the verified reader key of a signed request, or raise an :class:`AuthError`.

    ``headers`` must be case-insensitive or lower-cased (Starlette's are).
    Order of checks: shape, freshness, signature, then replay - so an
    attacker cannot fill the replay cache with unsigned junk.
    """
    reader = _hex_header(headers, HEADER_KEY, PUBLIC_KEY_SIZE)
    signature = _hex_header(headers, HEADER_SIGNATURE, SIGNATURE_SIZE)
    raw_ts = headers.get(HEADER_TIMESTAMP)
    if raw_ts is None:
        raise AuthError(f"missing header {HEADER_TIMESTAMP}")
    if not raw_ts.isascii() or not raw_ts.isdigit() or len(raw_ts) > 15:
        raise AuthError(f"header {HEADER_TIMESTAMP}: expected Unix milliseconds")
    timestamp_ms = int(raw_ts)
    if timestamp_ms < now_ms - max_age_ms:
        raise StaleRequestError(f"request is older than {max_age_ms} ms")
    if timestamp_ms > now_ms + max_skew_ms:
        raise StaleRequestError(f"request is more than {max_skew_ms} ms in the future")
    if not verify(reader, request_sign_bytes(method, target, body, timestamp_ms), signature):
        raise BadRequestSignatureError("request signature does not verify")
    replay.check_and_add(signature, now_ms + max_age_ms + max_skew_ms, now_ms)
    return reader
