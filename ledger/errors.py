"""The ledger's error vocabulary.

Every error that input from outside can cause is one of these classes, each
with a stable UPPER_SNAKE ``code``. The API maps ``code`` to its JSON error,
metrics count rejections by it, and tests assert on the class, never on a
message. Messages never contain patient data: they name fields, sizes and
hex prefixes of hashes only.
"""

from __future__ import annotations

import errno
import os


class LedgerError(Exception):
    """Base of every typed ledger error; ``code`` is stable API surface."""

    code: str = "LEDGER_ERROR"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


# --- decoding (phase: bytes -> structure) ---------------------------------------


class DecodeError(LedgerError):
    """Bytes that are not a valid encoding of the expected structure."""

    code = "MALFORMED"


class NonCanonicalError(DecodeError):
    """Bytes that decode, but are not the one canonical encoding of the value."""

    code = "NON_CANONICAL"


class TooLargeError(DecodeError):
    """Input over the configured size limit; rejected before decoding."""

    code = "TOO_LARGE"


# --- stateless checks (phase: structure alone) -----------------------------------


class InvalidTxError(LedgerError):
    """A structurally valid tx that breaks a stateless rule."""

    code = "INVALID_TX"


class WrongChainError(InvalidTxError):
    code = "WRONG_CHAIN"


class BadSignatureError(InvalidTxError):
    code = "BAD_SIGNATURE"


class BlobMismatchError(InvalidTxError):
    """The sidecar blob does not hash to what the signed tx commits to."""

    code = "BLOB_MISMATCH"


class BlobMissingError(InvalidTxError):
    code = "BLOB_MISSING"


class BlobReadersError(BlobMismatchError):
    """The blob's key wraps are not exactly the readers the signed body lists."""

    code = "BLOB_READERS_MISMATCH"


class BlobRecordError(BlobMismatchError):
    """The blob names a different record than the signed body."""

    code = "BLOB_RECORD_MISMATCH"


class InvalidBlobError(DecodeError):
    """A blob that decodes but breaks a structural rule (sizes, wrap order)."""

    code = "INVALID_BLOB"


# --- stateful checks (phase: tx against current state) ---------------------------


class StateRuleError(LedgerError):
    """A tx that is well formed but not allowed by the current state."""

    code = "RULE_VIOLATION"


class UnknownSenderError(StateRuleError):
    code = "UNKNOWN_SENDER"


class BadNonceError(StateRuleError):
    code = "BAD_NONCE"


class NonceReplayError(BadNonceError):
    """The sender already used this nonce: a replay."""

    code = "NONCE_REPLAYED"


class NonceGapError(BadNonceError):
    """The nonce skips ahead of the sender's next expected nonce."""

    code = "NONCE_GAP"


class UnauthorizedError(StateRuleError):
    code = "UNAUTHORIZED"


class AlreadyExistsError(StateRuleError):
    code = "ALREADY_EXISTS"


class NotFoundError(StateRuleError):
    code = "NOT_FOUND"


class ConsentDeniedError(StateRuleError):
    code = "CONSENT_DENIED"


class ErasedError(StateRuleError):
    code = "ERASED"


class NotSupportedError(StateRuleError):
    """A reserved tx type (validator-set change) that no node executes yet."""

    code = "NOT_SUPPORTED"


# --- integrity of what we stored ourselves ---------------------------------------


class CorruptionError(LedgerError):
    """Stored bytes failed their checksum or could not be decoded.

    This is never the peer's fault: it means the local disk lied. It must stop
    the node with a clear message rather than be served as data.
    """

    code = "CORRUPTION"


# --- client-side envelope crypto (never seen by apply) ----------------------------


class EnvelopeError(LedgerError):
    """Encrypting, wrapping, unwrapping or decrypting a record failed.

    Messages name sizes and public-key prefixes only, never keys or plaintext.
    """

    code = "ENVELOPE_ERROR"


class DecryptionError(EnvelopeError):
    """A ciphertext or key wrap did not authenticate (wrong key, record id or tampering)."""

    code = "DECRYPTION_FAILED"


class InvalidKeyError(EnvelopeError):
    """A public key that is not a usable ed25519 point, or a key of the wrong size."""

    code = "INVALID_KEY"


# --- local storage (helper B; never the peer's fault) -----------------------------


class InvalidBundleError(LedgerError):
    """Storage refused a commit bundle (wrong height, malformed field); nothing was written.

    A bug in the caller, not bad input from a peer: the node must not carry on
    as if the height were committed.
    """

    code = "INVALID_BUNDLE"


class StoreVersionError(LedgerError):
    """The store on disk was written with a schema version this code does not read."""

    code = "STORE_VERSION"


class StoreUnavailableError(LedgerError):
    """The store could not be opened (locked by another process, missing, unreadable)."""

    code = "STORE_UNAVAILABLE"


class StorageIOError(LedgerError):
    """A write to this node's own disk (LevelDB store, consensus WAL) failed.

    Never the peer's fault and never retried: LevelDB refuses every write after
    one failed, and after a failed fsync the kernel may already have dropped the
    pages, so a later "successful" fsync proves nothing. The node stops (exit
    status 74, EX_IOERR) with what was durably written left whole.
    ``where`` names the file or directory, never any content.
    """

    code = "STORAGE_IO"
    full = False

    def __init__(self, where: str, detail: str = "", *, advice: str = "") -> None:
        what = "no space left on device" if self.full else "write failed"
        message = f"{where}: {what}" + (f" ({detail})" if detail else "")
        super().__init__(message + (f"; {advice}" if advice else ""))
        self.where = where


class StorageFullError(StorageIOError):
    """The disk (or the user's quota) is full: free space, or move the data dir, and restart."""

    code = "STORAGE_FULL"
    full = True


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def storage_io_error(where: str, exc: BaseException) -> StorageIOError:
    """The typed error for a failed local write; :class:`StorageFullError` for a full disk.

    An ``OSError`` carries its errno; LevelDB (plyvel) only its message, which
    ends with the C library's ``strerror`` text -- the text :func:`os.strerror`
    returns in the same process.
    """
    raw = exc.args[0] if exc.args else ""
    detail = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if isinstance(exc, OSError) and exc.strerror:
        detail = exc.strerror
    full = getattr(exc, "errno", None) in _FULL_ERRNOS or any(
        os.strerror(code) in detail for code in _FULL_ERRNOS
    )
    if full and detail in map(os.strerror, _FULL_ERRNOS):
        detail = ""  # the message says it already
    return (StorageFullError if full else StorageIOError)(where, detail)


# --- state machine extras (helper A) ----------------------------------------------


class AlreadyRevokedError(StateRuleError):
    """A revocation of a consent that is already revoked."""

    code = "ALREADY_REVOKED"


class LimitExceededError(StateRuleError):
    """A tx that would grow a state entry past its bound (e.g. readers of a record)."""

    code = "LIMIT_EXCEEDED"


class InvalidGenesisError(LedgerError):
    """A genesis document that breaks a structural rule; the node must not start."""

    code = "INVALID_GENESIS"
