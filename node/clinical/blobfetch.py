"""Fetching a committed record's blob from peers: the sans-IO protocol core.

Why: a blob reaches other validators only by gossip, beside its tx. A gossip
batch can be lost, a blob larger than a gossip batch is never gossiped at
all, and a node that caught up by state transfer or lost a file has none of
the blobs of the heights it did not execute. The chain still says which blob
each record needs (``RecordMeta.blob_hash`` and each key release's
``wrap_blob_hash``), so a node can ask the other validators for it by hash
and check the answer against that committed hash: no peer can make it store
anything else.

This module holds no socket, clock or store: bytes and times in, requests
and outcomes out (the Trio driver is :mod:`node.clinical.blobfetch_service`).

Client side, :class:`BlobFetcher`:

* a bounded set of wanted blobs (``max_missing``; a want over the bound is
  refused, counted as ``overflow`` and flagged so the owner re-scans later);
* each attempt goes to one peer, rotating through the connected peers (the
  starting peer depends on the hash, so blobs spread over peers); a round
  ends when every connected peer was asked; after a failed round the blob
  waits ``backoff_initial_s * 2**(round-1)`` (capped) and after
  ``max_rounds`` failed rounds it is given up (``gave_up``);
* at most one request per peer and ``max_in_flight`` in all;
* an answer is accepted only if it is within ``max_blob_bytes``, hashes to
  the committed hash and decodes as a blob.

Server side, :class:`BlobServer`: answers validators only, with a token
bucket per peer; what it may serve is the owner's ``lookup`` (held, committed
and not erased, see :func:`node.clinical.blobfetch_service.servable_blob`).
It answers in two steps so that its driver can keep the event loop free:
:meth:`BlobServer.admit` (cheap: membership, the token bucket on the owner's
clock, decoding) and :meth:`BlobServer.serve` (the store lookup of up to a
4 MiB blob and its encoding, safe to run in a worker thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ledger import codec
from ledger.blob import MAX_BLOB_SIZE, blob_hash, decode_blob
from ledger.codec import Record
from ledger.errors import LedgerError
from ledger.hashing import HASH_SIZE

__all__ = [
    "FOUND",
    "MALFORMED",
    "NOT_FOUND",
    "RATE_LIMITED",
    "REFUSED",
    "BlobFetcher",
    "BlobRequest",
    "BlobResponse",
    "BlobServer",
    "FetchOutcome",
    "FetchRequest",
    "FetchSettings",
    "FetchStatistics",
    "ServeSettings",
    "ServeStatistics",
    "ServeTicket",
    "max_blob_for_frame",
]

# --- wire ----------------------------------------------------------------------------

FOUND = 0
NOT_FOUND = 1  # not held, not committed, or erased: the asker tries another peer
RATE_LIMITED = 2
REFUSED = 3  # the asker is not a validator
MALFORMED = 4  # the request did not decode

#: Encoded size of a response around its blob (array, status, bin32 header), rounded up.
RESPONSE_OVERHEAD = 64
_MAX_REQUEST_BYTES = 64


class BlobRequest(Record, frozen=True):
    """``/medledger/blob/1`` request: the blob with this committed hash, please."""

    blob_hash: bytes


class BlobResponse(Record, frozen=True):
    """The answer: a status and, for ``FOUND``, the blob's canonical bytes."""

    status: int
    blob: bytes | None = None


def max_blob_for_frame(max_message_bytes: int) -> int:
    """The largest blob that fits one response frame (and the ledger's own limit)."""
    return max(0, min(MAX_BLOB_SIZE, max_message_bytes - RESPONSE_OVERHEAD))


# --- client --------------------------------------------------------------------------

FetchResult = Literal["ok", "invalid", "not_found", "rate_limited", "unavailable"]


@dataclass(frozen=True, slots=True)
class FetchSettings:
    max_missing: int = 10_000
    max_in_flight: int = 4
    max_rounds: int = 6
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    request_timeout_s: float = 10.0
    max_blob_bytes: int = MAX_BLOB_SIZE

    def __post_init__(self) -> None:
        if min(self.max_missing, self.max_in_flight, self.max_rounds, self.max_blob_bytes) < 1:
            raise ValueError("blob fetch limits must be >= 1")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")

    def backoff(self, rounds: int) -> float:
        """The wait after ``rounds`` failed rounds (>= 1)."""
        return min(self.backoff_max_s, self.backoff_initial_s * (1 << min(rounds - 1, 32)))


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One request the driver must send: ``payload`` to ``peer`` on the blob protocol."""

    blob_hash: bytes
    record_id: bytes
    peer: bytes
    payload: bytes
    ticket: int


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """What one answer meant; ``blob`` is set only for a verified blob (``result == "ok"``)."""

    result: FetchResult | None  # None: the blob was no longer wanted (answer ignored)
    blob: bytes | None = None


@dataclass(frozen=True, slots=True)
class FetchStatistics:
    """Counters since start (one-to-one with ``medledger_blob_fetch_*``)."""

    missing: int
    in_flight: int
    ok: int
    invalid: int
    not_found: int
    rate_limited: int
    unavailable: int
    gave_up: int
    overflow: int


@dataclass(slots=True)
class _Wanted:
    record_id: bytes
    tried: set[bytes] = field(default_factory=set)
    rounds: int = 0
    next_at: float = 0.0
    ticket: int | None = None  # the request in flight, if any


class BlobFetcher:
    """The asking side: which blob to ask of which peer, and whether an answer is good."""

    def __init__(self, settings: FetchSettings | None = None) -> None:
        self.settings = settings if settings is not None else FetchSettings()
        self._wanted: dict[bytes, _Wanted] = {}
        self._busy: set[bytes] = set()  # peers with a request in flight
        self._in_flight = 0
        self._tickets = 0
        self._counts: dict[str, int] = dict.fromkeys(
            ("ok", "invalid", "not_found", "rate_limited", "unavailable", "gave_up", "overflow"), 0
        )
        #: A want was refused for lack of room; the owner re-scans once the set drains.
        self.overflowed = False

    def __contains__(self, blob_hash: bytes) -> bool:
        return blob_hash in self._wanted

    def __len__(self) -> int:
        return len(self._wanted)

    def want(self, blob_hash: bytes, record_id: bytes, now: float) -> bool:
        """Start fetching ``blob_hash`` (of ``record_id``); False if the set is full."""
        if len(blob_hash) != HASH_SIZE:
            raise ValueError(f"blob hash must be {HASH_SIZE} bytes")
        if blob_hash in self._wanted:
            return True
        if len(self._wanted) >= self.settings.max_missing:
            self._counts["overflow"] += 1
            self.overflowed = True
            return False
        self._wanted[blob_hash] = _Wanted(record_id, next_at=now)
        return True

    def cancel(self, blob_hash: bytes) -> None:
        """Stop fetching (held now, or erased); an answer in flight is then ignored."""
        self._wanted.pop(blob_hash, None)

    def poll(self, now: float, peers: Sequence[bytes]) -> list[FetchRequest]:
        """The requests to send now, given the peers connected now (in a stable order)."""
        out: list[FetchRequest] = []
        if not peers:
            return out
        s = self.settings
        for bh, w in list(self._wanted.items()):
            if self._in_flight >= s.max_in_flight or self._busy.issuperset(peers):
                break
            if w.ticket is not None or w.next_at > now:
                continue
            candidates = [p for p in _rotated(peers, bh) if p not in w.tried]
            if not candidates:  # every connected peer was asked: the round failed
                w.rounds += 1
                w.tried.clear()
                if w.rounds >= s.max_rounds:
                    del self._wanted[bh]
                    self._counts["gave_up"] += 1
                else:
                    w.next_at = now + s.backoff(w.rounds)
                continue
            peer = next((p for p in candidates if p not in self._busy), None)
            if peer is None:
                continue
            self._tickets += 1
            w.ticket = self._tickets
            self._busy.add(peer)
            self._in_flight += 1
            payload = codec.encode(BlobRequest(bh))
            out.append(FetchRequest(bh, w.record_id, peer, payload, self._tickets))
        return out

    def next_wakeup(self) -> float | None:
        """The earliest time a waiting blob may be asked for again (None: none waits)."""
        times = [w.next_at for w in self._wanted.values() if w.ticket is None]
        return min(times) if times else None

    def _release(self, req: FetchRequest) -> _Wanted | None:
        """Free the request's peer and slot; the wanted entry if this answer is current."""
        self._busy.discard(req.peer)
        self._in_flight -= 1
        w = self._wanted.get(req.blob_hash)
        if w is None or w.ticket != req.ticket:
            return None
        w.ticket = None
        return w

    def abandon(self, req: FetchRequest) -> None:
        """The driver did not send ``req``: the blob is held already (arrived by gossip)."""
        if self._release(req) is not None:
            del self._wanted[req.blob_hash]

    def on_failure(self, req: FetchRequest, now: float) -> None:
        """The peer did not answer (down, too slow, broke the stream)."""
        w = self._release(req)
        if w is not None:
            self._failed(w, req.peer, "unavailable", now)

    def on_response(self, req: FetchRequest, data: bytes, now: float) -> FetchOutcome:
        """Judge an answer; a verified blob leaves the wanted set."""
        w = self._release(req)
        if w is None:
            return FetchOutcome(None)
        result, blob = self._verify(req.blob_hash, data)
        if blob is None:
            self._failed(w, req.peer, result, now)
            return FetchOutcome(result)
        del self._wanted[req.blob_hash]
        self._counts["ok"] += 1
        return FetchOutcome("ok", blob)

    def _failed(self, w: _Wanted, peer: bytes, result: FetchResult, now: float) -> None:
        self._counts[result] += 1
        w.tried.add(peer)
        w.next_at = now  # the next peer at once; a whole failed round backs off (poll)

    def _verify(self, wanted: bytes, data: bytes) -> tuple[FetchResult, bytes | None]:
        limit = self.settings.max_blob_bytes
        try:
            answer = codec.decode(data, BlobResponse, max_size=limit + RESPONSE_OVERHEAD)
        except LedgerError:
            return "invalid", None
        if answer.status == NOT_FOUND:
            return "not_found", None
        if answer.status == RATE_LIMITED:
            return "rate_limited", None
        blob = answer.blob
        if answer.status != FOUND or blob is None or len(blob) > limit:
            return "invalid", None
        if blob_hash(blob) != wanted:  # the one check that matters: the committed hash
            return "invalid", None
        try:
            decode_blob(blob, limit)
        except LedgerError:
            return "invalid", None
        return "ok", blob

    def statistics(self) -> FetchStatistics:
        c = self._counts
        return FetchStatistics(
            missing=len(self._wanted),
            in_flight=self._in_flight,
            ok=c["ok"],
            invalid=c["invalid"],
            not_found=c["not_found"],
            rate_limited=c["rate_limited"],
            unavailable=c["unavailable"],
            gave_up=c["gave_up"],
            overflow=c["overflow"],
        )


def _rotated(peers: Sequence[bytes], blob_hash: bytes) -> list[bytes]:
    start = int.from_bytes(blob_hash[:4], "big") % len(peers)
    return [*peers[start:], *peers[:start]]


# --- server --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Per-peer token bucket: ``rate_per_s`` sustained, ``burst`` at once."""

    rate_per_s: float = 10.0
    burst: int = 20
    max_blob_bytes: int = MAX_BLOB_SIZE

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1 or self.max_blob_bytes < 1:
            raise ValueError("blob serving limits must be > 0")


@dataclass(frozen=True, slots=True)
class ServeStatistics:
    sent: int
    not_found: int
    rate_limited: int
    refused: int
    malformed: int


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(frozen=True, slots=True)
class ServeTicket:
    """An admitted request (validator, within its rate, well formed): look up ``blob_hash``."""

    blob_hash: bytes


class BlobServer:
    """The answering side: validators only, rate-limited per peer, ``lookup`` decides.

    ``lookup(blob_hash)`` returns the blob's bytes if this node may serve it
    (held, referenced by committed state, not erased), else None. ``clock``
    is monotonic seconds. Buckets exist only for validators, so their number
    is bounded by the validator set.

    Threads: :meth:`admit` reads ``clock`` and must run where ``clock`` works
    (the node's clock is ``trio.current_time``, which raises outside the Trio
    thread: that is why an earlier attempt that ran all of :meth:`handle` in a
    worker thread failed). :meth:`serve` calls only ``lookup`` and may run in
    any thread; the counters are locked.
    """

    def __init__(
        self,
        validators: Iterable[bytes],
        lookup: Callable[[bytes], bytes | None],
        clock: Callable[[], float],
        settings: ServeSettings | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ServeSettings()
        self._validators = frozenset(validators)
        self._lookup = lookup
        self._clock = clock
        self._buckets: dict[bytes, _Bucket] = {}
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            ("sent", "not_found", "rate_limited", "refused", "malformed"), 0
        )

    def handle(self, peer: bytes, request: bytes) -> bytes:
        """The encoded answer to ``request`` from ``peer`` (never raises for bad input).

        :meth:`admit` then :meth:`serve` on the caller's thread: for callers
        whose ``lookup`` is cheap (tests, an in-memory store).
        """
        admitted = self.admit(peer, request)
        if isinstance(admitted, bytes):
            return admitted
        return self.serve(admitted)

    def admit(self, peer: bytes, request: bytes) -> bytes | ServeTicket:
        """First step, on the clock's thread: the final answer (refused, rate-limited,
        malformed) or a ticket for :meth:`serve`. Never raises for bad input."""
        if peer not in self._validators:
            return self._answer("refused", REFUSED)
        if not self._take(peer):
            return self._answer("rate_limited", RATE_LIMITED)
        try:
            wanted = codec.decode(request, BlobRequest, max_size=_MAX_REQUEST_BYTES).blob_hash
        except LedgerError:
            return self._answer("malformed", MALFORMED)
        if len(wanted) != HASH_SIZE:
            return self._answer("malformed", MALFORMED)
        return ServeTicket(wanted)

    def serve(self, ticket: ServeTicket) -> bytes:
        """Second step, on any thread: look the blob up and encode the answer."""
        blob = self._lookup(ticket.blob_hash)
        if blob is None or len(blob) > self.settings.max_blob_bytes:
            return self._answer("not_found", NOT_FOUND)
        return self._answer("sent", FOUND, blob)

    def _answer(self, counter: str, status: int, blob: bytes | None = None) -> bytes:
        with self._lock:
            self._counts[counter] += 1
        return codec.encode(BlobResponse(status, blob))

    def _take(self, peer: bytes) -> bool:
        s = self.settings
        now = self._clock()
        with self._lock:
            b = self._buckets.get(peer)
            if b is None:
                b = self._buckets[peer] = _Bucket(float(s.burst), now)
            b.tokens = min(float(s.burst), b.tokens + (now - b.at) * s.rate_per_s)
            b.at = now
            if b.tokens < 1.0:
                return False
            b.tokens -= 1.0
            return True

    def statistics(self) -> ServeStatistics:
        with self._lock:
            c = dict(self._counts)
        return ServeStatistics(
            sent=c["sent"],
            not_found=c["not_found"],
            rate_limited=c["rate_limited"],
            refused=c["refused"],
            malformed=c["malformed"],
        )
