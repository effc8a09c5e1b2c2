"""Typed errors of the clinical reads and clients (codes are API surface).

Every class derives from a :mod:`ledger.errors` or API class, so the API maps
it to the right HTTP status without a new table entry, and the CLI prints its
code. Messages never contain patient data: ids as hex prefixes only.
"""

from __future__ import annotations

from ledger.errors import DecodeError, LedgerError, UnauthorizedError
from node.api.facade import NotReadyError


class AccessRequiredError(UnauthorizedError):
    """A record read that does not name a committed ``RecordAccess`` of the reader (403).

    The audit entry must be on chain before anything is released, so a read
    always points at the reader's own access tx (``?access=<tx hash>``).
    """

    code = "ACCESS_REQUIRED"


class AccessExpiredError(UnauthorizedError):
    """The access tx named is too old to release data now (403); submit a new one."""

    code = "ACCESS_EXPIRED"


class AccessPendingError(NotReadyError):
    """The access tx is not committed yet on this node (503): retry shortly."""

    code = "ACCESS_PENDING"


class KeyReleasePendingError(NotReadyError):
    """Access is allowed but the custodian has not committed the reader's key wrap yet (503)."""

    code = "KEY_RELEASE_PENDING"


class BlobUnavailableError(NotReadyError):
    """This node does not hold the record's blob (it never received it): try another node."""

    code = "BLOB_UNAVAILABLE"


class InvalidFhirError(DecodeError):
    """A FHIR resource that the FHIR R4B models refuse; the message names the field."""

    code = "INVALID_FHIR"


class ApiError(LedgerError):
    """An error answer of a node, as the client library raises it.

    ``code`` is the node's error code (instance attribute), ``status`` the
    HTTP status.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message or code)
        self.status = status
        self.code = code


class CommitTimeoutError(LedgerError):
    """A submitted tx did not commit before the client's deadline."""

    code = "COMMIT_TIMEOUT"


class ProofError(LedgerError):
    """An offline proof that does not verify; the message says which check failed."""

    code = "PROOF_INVALID"
