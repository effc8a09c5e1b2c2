"""Push txs too large for gossip to every validator over a direct stream.

py-libp2p drops a pubsub message over 1 MiB at the sender without an error
(LIBP2P_NOTES.md, pitfall 8), so a record whose encrypted blob is larger than
that could never be gossiped: it reached only the node that took it from the
client and committed only if that node happened to be the primary. The
mempool routes such items to :attr:`node.mempool.Mempool.direct_outbox`; this
service sends each, as a one-item batch, to every connected validator on
``/medledger/txpush/1`` (the transport's request streams: framed, bounded,
allow-listed), and admits what peers push to it exactly like a gossiped batch.

A push to a peer that is down is retried a few times with backoff and then
counted; the tx stays in our own mempool, reaches blocks we propose, and a peer
that commits it without the blob fetches the blob afterwards
(:mod:`node.clinical.blobfetch`). Every outcome is a metric, never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import trio

from ledger.blob import MAX_BLOB_SIZE
from ledger.errors import LedgerError
from node.clinical.blobfetch_service import RequestTransport
from node.mempool import Mempool, encode_batch
from node.metrics import NodeMetrics
from node.p2p import TX_PUSH_PROTOCOL, PeerUnavailableError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

#: Largest pushed batch accepted: one tx with the largest blob, and room to spare.
MAX_PUSH_BYTES = MAX_BLOB_SIZE + 256 * 1024
_ACCEPTED, _KNOWN, _REJECTED, _MALFORMED = b"\x00", b"\x01", b"\x02", b"\x03"
_ATTEMPTS = 4
_BACKOFF_S = 0.5


class TxPushService:
    """Sends the mempool's oversized items to validators and admits theirs."""

    def __init__(
        self,
        mempool: Mempool,
        transport: RequestTransport,
        metrics: NodeMetrics,
        *,
        validators: Sequence[bytes],
        on_admitted: Callable[[bytes], None],
        timeout_s: float = 30.0,
    ) -> None:
        self._mempool = mempool
        self._transport = transport
        self._metrics = metrics
        self._validators = list(validators)  # without ourselves
        self._on_admitted = on_admitted
        self._timeout_s = timeout_s

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._transport.set_request_handler(self._serve, protocol=TX_PUSH_PROTOCOL)
        task_status.started()
        async with trio.open_nursery() as nursery, self._mempool.direct_outbox as outbox:
            async for tx_bytes, blob in outbox:
                data = encode_batch([(tx_bytes, blob)])
                for peer in self._validators:
                    nursery.start_soon(self._push, peer, data)

    async def _push(self, peer: bytes, data: bytes) -> None:
        for attempt in range(_ATTEMPTS):
            try:
                answer = await self._transport.request(
                    peer, data, timeout=self._timeout_s, protocol=TX_PUSH_PROTOCOL
                )
            except PeerUnavailableError:
                await trio.sleep(_BACKOFF_S * 2**attempt)
                continue
            result = {_ACCEPTED: "accepted", _KNOWN: "known", _REJECTED: "rejected"}.get(
                answer, "malformed"
            )
            self._metrics.tx_push.labels(result).inc()
            return
        self._metrics.tx_push.labels("unreachable").inc()
        log.warning("could not push a large tx to validator %s", peer.hex()[:16])

    async def _serve(self, peer: bytes, request: bytes) -> bytes:
        """Admit a peer's pushed batch as if gossiped; answer with one status byte."""
        try:
            outcome = await self._mempool.add_batch(
                request, source="gossip", max_bytes=MAX_PUSH_BYTES
            )
        except LedgerError as exc:
            self._metrics.messages_dropped.labels(exc.code.lower()).inc()
            return _MALFORMED
        self._on_admitted(request)
        if outcome.accepted:
            return _ACCEPTED
        return _KNOWN if outcome.duplicates else _REJECTED
