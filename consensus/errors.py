"""Consensus error vocabulary.

Following h11, a fault is either the peer's (:class:`RemoteProtocolError`: a
malformed, unsigned, out-of-place or forged message; it is dropped, counted and
may become evidence) or ours (:class:`LocalProtocolError`: the caller or this
node broke an invariant; it must surface, never be swallowed). Storage that
lies is a :class:`WALCorruptionError`, a :class:`ledger.errors.CorruptionError`.
"""

from __future__ import annotations

from ledger.errors import CorruptionError, LedgerError


class RemoteProtocolError(LedgerError):
    """A peer sent something that breaks the protocol; drop it and count it."""

    code = "CONSENSUS_REMOTE_PROTOCOL"


class BadMessageError(RemoteProtocolError):
    """The message is well encoded but fails ``validate_basic`` (field bounds)."""

    code = "CONSENSUS_BAD_MESSAGE"


class BadConsensusSignatureError(RemoteProtocolError):
    code = "CONSENSUS_BAD_SIGNATURE"


class NotAValidatorError(RemoteProtocolError):
    code = "CONSENSUS_NOT_A_VALIDATOR"


class InvalidProofError(RemoteProtocolError):
    """A certificate or proof (prepared, checkpoint, commit, view change) does not verify."""

    code = "CONSENSUS_INVALID_PROOF"


class LocalProtocolError(LedgerError):
    """This node (or its driver) broke a protocol invariant: a bug, never input."""

    code = "CONSENSUS_LOCAL_PROTOCOL"


class SafetyViolationError(LocalProtocolError):
    """Two conflicting blocks would be committed at one height; the node must halt."""

    code = "CONSENSUS_SAFETY_VIOLATION"


class WALCorruptionError(CorruptionError):
    """The write-ahead log is damaged somewhere other than a torn last frame."""

    code = "WAL_CORRUPTION"

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at offset {offset}")
        self.offset = offset
