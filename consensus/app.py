"""The narrow interface between consensus and the application it orders.

Consensus orders opaque blocks; it knows a block only through this protocol.
The calls are synchronous and must be deterministic and quick (no network):
the core calls them inline while handling an input, which keeps the core
sans-IO (it still never touches sockets, clocks, files or randomness itself)
and makes every transition replayable. Committing is different: it may be
slow (one storage batch), so the core emits a :class:`consensus.core.CommitBlock`
effect, the driver calls :meth:`Application.commit`, and reports the state
digest back through ``Replica.executed``.

``ancestors`` lists every block between the application's last *executed*
height and ``height - 1``, in height order: with pipelining a block is
validated on top of blocks that are ordered (or even committed, with their
:class:`~consensus.core.CommitBlock` still queued) but not yet executed, so the
application must check it against them too (for example: no tx twice, nonces
in sequence). This holds as long as the driver reports every execution through
``Replica.executed`` right after it, before any other input.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class VerdictKind(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    NOT_YET = "not_yet"  # e.g. proposer time ahead of ours: retry later


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str = ""

    @classmethod
    def ok(cls) -> Verdict:
        return cls(VerdictKind.OK)

    @classmethod
    def invalid(cls, reason: str) -> Verdict:
        return cls(VerdictKind.INVALID, reason)

    @classmethod
    def not_yet(cls, reason: str) -> Verdict:
        return cls(VerdictKind.NOT_YET, reason)


class Application(Protocol):
    """What the PBFT core needs from the replicated application."""

    def propose(self, height: int, parent: bytes, ancestors: Sequence[bytes]) -> bytes | None:
        """A new block for ``height`` on ``parent`` (reaped from the mempool), or None if idle."""
        ...

    def validate(
        self, height: int, parent: bytes, block: bytes, ancestors: Sequence[bytes]
    ) -> Verdict:
        """Full check of a proposal: structure, parent, height, time bounds, every tx
        signature (each verified at most once per node: cache by tx hash)."""
        ...

    def digest_of(self, block: bytes) -> bytes | None:
        """The block's hash, or None if ``block`` is not a decodable block."""
        ...

    def parent_of(self, block: bytes) -> bytes | None:
        """The block's parent hash, or None if ``block`` is not a decodable block."""
        ...

    def has_pending(self) -> bool:
        """True when the mempool holds work, so lack of progress means a faulty primary."""
        ...

    def committed_block(self, height: int) -> tuple[bytes, bytes] | None:
        """``(block, encoded CommitCertificate)`` committed at ``height``, for state transfer."""
        ...

    def commit(self, height: int, block: bytes, certificate: bytes) -> bytes:
        """Execute and persist ``block`` (strictly in height order); return the state digest."""
        ...
