"""What the HTTP API needs from the node, and nothing more.

The ASGI app talks to the node only through :class:`NodeFacade`, so the API is
tested with a fake and the node can change behind it. Values returned here are
plain data: ``bytes`` (rendered as lowercase hex), ints, strings, sequences,
mappings, frozen dataclasses and :class:`ledger.codec.Record` structures (rendered
as objects keyed by field name). Failures are typed
:class:`~ledger.errors.LedgerError` exceptions; the API maps their ``code`` to
an HTTP status (see :mod:`node.api.errors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ledger.errors import LedgerError


class NotReadyError(LedgerError):
    """The node cannot serve this yet (catching up, no quorum): HTTP 503."""

    code = "NOT_READY"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """``GET /v1/status``; ``extra`` carries optional details (mempool size, syncing)."""

    chain_id: str
    node_id: bytes  # own validator key
    height: int  # last committed
    view: int
    primary: bytes  # node_id of the view's primary
    validators: Sequence[bytes]
    peers: int
    state_root: bytes  # at ``height``
    extra: Mapping[str, object] = field(default_factory=dict)


TxState = Literal["pending", "committed", "unknown"]


@dataclass(frozen=True, slots=True)
class TxStatus:
    """``GET /v1/txs/{hash}``: where a tx is; ``proof`` only when asked for and committed."""

    hash: bytes
    status: TxState
    height: int | None = None
    index: int | None = None
    code: str | None = None  # the committed tx's result code ("OK" or an error code)
    proof: object = None


@dataclass(frozen=True, slots=True)
class BlockView:
    """``GET /v1/blocks/{height}``."""

    height: int
    hash: bytes
    header: object  # a BlockHeader record
    tx_hashes: Sequence[bytes]
    certificate: object  # the commit certificate record


@dataclass(frozen=True, slots=True)
class AccountView:
    """``GET /v1/accounts/{key}``: what a client needs to sign its next tx."""

    key: bytes
    kind: Literal["organisation", "clinician", "patient"]
    org: bytes  # the organisation itself, the clinician's employer, the patient's registrar
    nonce: int  # next nonce after the committed state
    next_nonce: int  # next nonce after this node's pending txs of the key


class NodeFacade(Protocol):
    """The node as the API sees it. Async methods may wait on storage or consensus."""

    def ready(self) -> bool:
        """Caught up and connected to a quorum."""
        ...

    def status(self) -> NodeStatus: ...

    def metrics_text(self) -> bytes:
        """Prometheus text exposition of the node's own registry."""
        ...

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes:
        """Admit one tx; return its hash. Raises ``AlreadyKnownError`` for a pending duplicate."""
        ...

    async def submit_batch(
        self, items: Sequence[tuple[bytes, bytes | None]]
    ) -> Sequence[bytes | LedgerError]:
        """Admit many txs; one hash or error per item, in order."""
        ...

    async def tx_status(self, tx_hash: bytes, prove: bool) -> TxStatus: ...

    async def account(self, key: bytes) -> AccountView:
        """A registered identity's role and nonces; ``NotFoundError`` if unknown."""
        ...

    async def block(self, height: int | None) -> BlockView:
        """The committed block at ``height`` (``None``: the latest); ``NotFoundError`` if none."""
        ...

    async def read_record(self, record_id: bytes, reader: bytes, access_tx: bytes | None) -> object:
        """Signed read of a record: ciphertext and ``reader``'s key wrap, once the
        reader's access (``access_tx``, a committed ``RecordAccess``) is on chain."""
        ...

    async def patient_audit(self, patient: bytes, reader: bytes) -> object:
        """Signed read of a patient's access log (``reader`` must be allowed to see it)."""
        ...

    async def evidence(self, limit: int, before: int | None) -> object:
        """Stored equivocation evidence, newest first: up to ``limit`` entries older than
        ``before`` (see :mod:`node.evidence`)."""
        ...
