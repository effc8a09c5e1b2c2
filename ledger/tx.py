"""Transactions: the signed envelope and every body type.

A transaction is ``Tx(chain_id, sender, nonce, body, signature)``. The
signature covers ``SIGN_TX || encode(UnsignedTx(chain_id, sender, nonce,
body))``; the tx hash is the tagged hash of the whole canonical encoding. The
body is a tagged union: the integer tag is the first element of its array and
is the tx *type*; tags are protocol constants and are never reused.

No field of any body carries patient data in clear: records travel encrypted in
a sidecar blob and the body holds only the blob's hash. Free-text fields
(names of organisations and clinicians, categories, purposes, reason codes) are
short codes, bounded in length by :mod:`ledger.validate`.
"""

from __future__ import annotations

from ledger import codec
from ledger.codec import Record
from ledger.hashing import H_TX, SIGN_TX, tagged_hash
from ledger.keys import KeyPair


class RegisterOrganization(Record, frozen=True, tag=1):
    """A hospital. Valid only in genesis (height 0); ``org`` is its public key."""

    org: bytes
    name: str


class RegisterClinician(Record, frozen=True, tag=2):
    """Signed by the organisation (``sender``) that employs the clinician."""

    clinician: bytes
    display_name: str


class RegisterPatient(Record, frozen=True, tag=3):
    """Signed by the registering organisation; ``patient`` is the patient's own key.

    Nothing identifying the patient is on chain: demographics live only in
    encrypted records.
    """

    patient: bytes


class AnchorRecord(Record, frozen=True, tag=4):
    """Anchors an encrypted record: the blob holds ciphertext and key wraps.

    Sent by the custodian organisation or one of its clinicians.
    ``readers`` lists (sorted, unique) every identity the blob carries a key
    wrap for; it is in the body because apply must never read blobs (they can
    be erased, and replaying the chain must still give the same state).
    ``supersedes`` names the record this one amends (both stay auditable).
    """

    record_id: bytes
    patient: bytes
    category: str
    custodian: bytes
    blob_hash: bytes
    readers: list[bytes]
    supersedes: bytes | None = None


class GrantConsent(Record, frozen=True, tag=5):
    """Patient-signed consent rule.

    Scope: the grant covers a record if its category is in ``categories`` or
    its id is in ``record_ids`` (both sorted, no duplicates). Validity is the
    half-open block-time window ``[not_before_ms, not_after_ms)``.
    """

    consent_id: bytes
    grantee: bytes
    categories: list[str]
    record_ids: list[bytes]
    purpose: str
    not_before_ms: int
    not_after_ms: int
    emergency_allowed: bool


class RevokeConsent(Record, frozen=True, tag=6):
    """Patient-signed; effective from the block that commits it."""

    consent_id: bytes


class RecordAccess(Record, frozen=True, tag=7):
    """The audit entry of a read, signed by the reader (``sender``).

    Exactly one of ``consent_id`` (normal access) and ``emergency_reason``
    (break-glass, a reason code such as ``ETREAT``) is set. A read that the
    rules refuse is still committed, with a failing result code: denied reads
    are audited too.
    """

    record_id: bytes
    purpose: str
    consent_id: bytes | None = None
    emergency_reason: str | None = None


class KeyRelease(Record, frozen=True, tag=8):
    """The custodian re-wraps a record key for ``reader``; the wrap is a blob."""

    record_id: bytes
    reader: bytes
    wrap_blob_hash: bytes


class EraseRecord(Record, frozen=True, tag=9):
    """Patient-signed crypto-shredding of a record and the versions it supersedes."""

    record_id: bytes


class ValidatorSetChange(Record, frozen=True, tag=10):
    """Reserved for membership changes; every node rejects it for now."""

    add: list[bytes]
    remove: list[bytes]


Body = (
    RegisterOrganization
    | RegisterClinician
    | RegisterPatient
    | AnchorRecord
    | GrantConsent
    | RevokeConsent
    | RecordAccess
    | KeyRelease
    | EraseRecord
    | ValidatorSetChange
)

BODY_TYPES: tuple[type[Record], ...] = (
    RegisterOrganization,
    RegisterClinician,
    RegisterPatient,
    AnchorRecord,
    GrantConsent,
    RevokeConsent,
    RecordAccess,
    KeyRelease,
    EraseRecord,
    ValidatorSetChange,
)


class UnsignedTx(Record, frozen=True):
    chain_id: str
    sender: bytes
    nonce: int
    body: Body


class Tx(Record, frozen=True):
    chain_id: str
    sender: bytes
    nonce: int
    body: Body
    signature: bytes

    def unsigned(self) -> UnsignedTx:
        return UnsignedTx(self.chain_id, self.sender, self.nonce, self.body)

    def sign_bytes(self) -> bytes:
        return sign_bytes(self.unsigned())

    def encode(self) -> bytes:
        return codec.encode(self)

    def hash(self) -> bytes:
        return tx_hash(codec.encode(self))

    @property
    def type_name(self) -> str:
        return type(self.body).__name__


def sign_bytes(unsigned: UnsignedTx) -> bytes:
    """The exact bytes a sender signs: domain tag plus canonical encoding."""
    return SIGN_TX + codec.encode(unsigned)


def tx_hash(tx_bytes: bytes) -> bytes:
    """Hash of a tx's canonical bytes (signature included)."""
    return tagged_hash(H_TX, tx_bytes)


def make_tx(key: KeyPair, chain_id: str, nonce: int, body: Body) -> Tx:
    """Build and sign a tx with ``key`` as sender."""
    unsigned = UnsignedTx(chain_id, key.public_key, nonce, body)
    return Tx(chain_id, key.public_key, nonce, body, key.sign(sign_bytes(unsigned)))
