"""Many concurrent HTTP clients hammering one node's API with junk and valid txs.

Adversaries A1 (anyone who reaches the API) and A2 (a registered client gone
bad) of ``SECURITY.md``. Each client loops over a fixed cycle of request kinds
until the deadline, so a run is the same mix every time:

* ``malformed_json``, ``bad_hex``: cheap refusals;
* ``random_tx``: random bytes where a tx belongs (decode refusal);
* ``bad_signature``: a well-formed tx whose signature is one bit off (costs
  the node a signature check);
* ``junk_batch``: a batch of 200 random txs;
* ``big_body``: a body just under the batch endpoint's byte limit that is not
  JSON (the node must buffer it before it can refuse it): the memory attack;
* ``valid``: a batch of pre-signed valid txs from a shared pool, released at a
  fixed rate (when none is due the client sends junk instead).

The report counts answers by status and error code and transport failures;
a 5xx other than 503 (overload, mempool full) is a bug.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import trio

from ledger import codec
from ledger.keys import KeyPair
from ledger.tx import RegisterPatient, make_tx
from node.load import PreparedTx

KINDS = (
    "malformed_json",
    "bad_hex",
    "random_tx",
    "bad_signature",
    "junk_batch",
    "valid",
    "big_body",
)
VALID_BATCH = 10


@dataclass
class ApiFloodReport:
    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    valid_accepted: int = 0
    bytes_sent: int = 0

    def server_errors(self) -> int:
        """Answers that mean the node broke rather than refused (5xx except 503)."""
        return sum(n for s, n in self.statuses.items() if s >= 500 and s != 503)

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_kind": dict(sorted(self.by_kind.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "codes": dict(sorted(self.codes.items())),
            "transport_errors": dict(sorted(self.transport_errors.items())),
            "valid_accepted": self.valid_accepted,
            "mib_sent": round(self.bytes_sent / 2**20, 1),
        }


class _Bodies:
    """Request bodies, built once (the flood measures the node, not this client)."""

    def __init__(self, chain_id: str, big_body_bytes: int) -> None:
        signer = KeyPair.from_seed(b"api-flood-bad-signature-key-0000")
        tx = bytearray(codec.encode(make_tx(signer, chain_id, 0, RegisterPatient(b"\x02" * 32))))
        tx[-1] ^= 0x01
        self.bad_signature = b'{"tx": "' + bytes(tx).hex().encode() + b'"}'
        self.malformed_json = b'{"tx": [1, 2, '
        self.bad_hex = b'{"tx": "zz-not-hex"}'
        self.random_tx = b'{"tx": "' + os.urandom(300).hex().encode() + b'"}'
        junk = b",".join(b'{"tx": "' + os.urandom(150).hex().encode() + b'"}' for _ in range(200))
        self.junk_batch = b'{"txs": [' + junk + b"]}"
        self.big_body = b'{"txs": "' + b"x" * max(0, big_body_bytes - 16) + b'"}'


async def api_flood(
    url: str,
    *,
    chain_id: str,
    clients: int,
    duration_s: float,
    valid_txs: Sequence[PreparedTx],
    valid_rate: float,
    big_body_bytes: int,
    kinds: Sequence[str] = KINDS,
) -> ApiFloodReport:
    """Run ``clients`` concurrent clients against ``url`` for ``duration_s`` seconds."""
    report = ApiFloodReport()
    bodies = _Bodies(chain_id, big_body_bytes)
    due_send, due_recv = trio.open_memory_channel[list[PreparedTx]](1024)
    t0 = trio.current_time()
    deadline = t0 + duration_s

    async def release_valid() -> None:
        if valid_rate <= 0:
            return
        interval = VALID_BATCH / valid_rate
        for n, start in enumerate(range(0, len(valid_txs), VALID_BATCH)):
            if t0 + n * interval >= deadline:
                return
            await trio.sleep_until(t0 + n * interval)
            await due_send.send(list(valid_txs[start : start + VALID_BATCH]))

    async def client(index: int) -> None:
        json_type = {"content-type": "application/json"}
        async with httpx.AsyncClient(timeout=30.0) as c:
            i = index
            while trio.current_time() < deadline:
                kind = kinds[i % len(kinds)]
                i += 1
                path, body, valid = "/v1/txs", b"", None
                if kind == "valid":
                    try:
                        valid = due_recv.receive_nowait()
                    except trio.WouldBlock:
                        kind = "junk_batch"
                if kind == "valid" and valid is not None:
                    items = b",".join(b'{"tx": "' + p.data.hex().encode() + b'"}' for p in valid)
                    path, body = "/v1/txs/batch", b'{"txs": [' + items + b"]}"
                elif kind in ("junk_batch", "big_body"):
                    path, body = "/v1/txs/batch", getattr(bodies, kind)
                else:
                    body = getattr(bodies, kind)
                report.requests += 1
                report.by_kind[kind] += 1
                report.bytes_sent += len(body)
                try:
                    r = await c.post(url + path, content=body, headers=json_type)
                except httpx.HTTPError as exc:
                    report.transport_errors[type(exc).__name__] += 1
                    continue
                report.statuses[r.status_code] += 1
                _tally(report, r, valid is not None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_valid)
        for k in range(clients):
            nursery.start_soon(client, k)
        await trio.sleep_until(deadline)
        # Let in-flight requests finish; the clients stop at their next turn.
    return report


def _tally(report: ApiFloodReport, r: httpx.Response, valid: bool) -> None:
    try:
        body = r.json()
    except ValueError:
        report.codes["non-json"] += 1
        return
    if not isinstance(body, dict):
        return
    if "error" in body:
        report.codes[str(body["error"].get("code"))] += 1
    elif valid:
        report.valid_accepted += int(body.get("accepted", 0))
