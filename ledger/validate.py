"""Stateless checks of a transaction: what can be decided from its bytes alone.

The checks run cheapest first, each with its own typed error, so that junk is
refused before anything costly happens:

1. size (:class:`TooLargeError`) - before a single byte is parsed;
2. decoding, canonical only (:class:`DecodeError` / :class:`NonCanonicalError`);
3. chain id (:class:`WrongChainError`) - a tx of another network is never valid here;
4. field shape (:class:`InvalidTxError`, the message names the field): key and
   id sizes, string and list bounds, sorted and unique lists, sane windows;
5. signature (:class:`BadSignatureError`) - the one expensive step (~56 us).

A node verifies each tx signature at most once: :class:`SigCache` remembers the
hashes of txs that passed every check here (the hash covers the signature and
every signed byte, so a hit means these exact bytes were verified). A cache
belongs to one node, hence to one chain id and one set of limits. The mempool
fills it, PBFT block validation and :func:`ledger.apply.apply_block` reuse it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ledger import codec
from ledger.errors import BadSignatureError, InvalidTxError, TooLargeError, WrongChainError
from ledger.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, verify
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    KeyRelease,
    RecordAccess,
    RegisterClinician,
    RegisterOrganization,
    RegisterPatient,
    RevokeConsent,
    Tx,
    ValidatorSetChange,
    tx_hash,
)

HASH_SIZE = 32
MAX_UINT64 = 2**64 - 1
MAX_TIME_MS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a single tx; protocol constants (changing one is a fork)."""

    max_tx_bytes: int = 64 * 1024
    max_str: int = 64  # characters of any name or code
    max_list: int = 64  # entries of any list in a body
    min_id: int = 16  # record and consent ids: 16..32 bytes
    max_id: int = 32
    key_size: int = PUBLIC_KEY_SIZE  # ed25519 public keys, exactly
    max_record_readers: int = 256  # readers of one record after key releases


DEFAULT_LIMITS = Limits()


class SigCache:
    """Bounded LRU set of tx hashes whose signature verified.

    Shared by the node's Trio thread (admission, block validation) and the
    commit worker thread (``apply_block``), so every operation holds a lock:
    a lookup's ``move_to_end`` racing another thread's eviction would raise
    ``KeyError`` in the middle of a commit. Only successes are cached, so a
    flood of bad signatures cannot evict good entries faster than it costs the
    attacker a verification each.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, txh: bytes) -> bool:
        with self._lock:
            if txh in self._entries:
                self._entries.move_to_end(txh)
                return True
            return False

    def add(self, txh: bytes) -> None:
        with self._lock:
            self._entries[txh] = None
            self._entries.move_to_end(txh)
            if len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def check_tx_bytes(
    data: bytes, chain_id: str, limits: Limits = DEFAULT_LIMITS, verified: SigCache | None = None
) -> tuple[Tx, bytes]:
    """Every stateless check of a tx as received; returns ``(tx, tx_hash)``."""
    if len(data) > limits.max_tx_bytes:
        raise TooLargeError(f"tx of {len(data)} bytes exceeds {limits.max_tx_bytes}")
    tx = codec.decode(data, Tx, max_size=limits.max_tx_bytes)
    txh = tx_hash(data)
    check_tx(tx, txh, chain_id, limits, verified)
    return tx, txh


def check_tx(
    tx: Tx, txh: bytes, chain_id: str, limits: Limits = DEFAULT_LIMITS,
    verified: SigCache | None = None,
) -> None:
    """Chain id, field shape and signature of an already decoded tx.

    ``txh`` must be the hash of ``tx``'s canonical bytes. A tx passing every
    check is added to ``verified``; a tx already in it is accepted at once: the
    hash pins every byte, and a node's cache only ever holds txs that passed
    these checks for its one chain id and limits.
    """
    if verified is not None and txh in verified:
        return
    if tx.chain_id != chain_id:
        raise WrongChainError("tx is for another chain")
    check_shape(tx, limits)
    if not verify(tx.sender, tx.sign_bytes(), tx.signature):
        raise BadSignatureError(f"bad signature on tx {txh.hex()[:16]}")
    if verified is not None:
        verified.add(txh)


# --- field shape -------------------------------------------------------------------


def _key(value: bytes, field: str, limits: Limits) -> None:
    if len(value) != limits.key_size:
        raise InvalidTxError(f"{field}: key must be {limits.key_size} bytes")


def _id(value: bytes, field: str, limits: Limits) -> None:
    if not limits.min_id <= len(value) <= limits.max_id:
        raise InvalidTxError(f"{field}: id must be {limits.min_id}..{limits.max_id} bytes")


def _hash(value: bytes, field: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidTxError(f"{field}: hash must be {HASH_SIZE} bytes")


def _text(value: str, field: str, limits: Limits, *, empty_ok: bool = False) -> None:
    if len(value) > limits.max_str:
        raise InvalidTxError(f"{field}: longer than {limits.max_str} characters")
    if not value and not empty_ok:
        raise InvalidTxError(f"{field}: must not be empty")
    if not value.isprintable():
        raise InvalidTxError(f"{field}: must be printable")


def _sorted_unique(values: Sequence[bytes] | Sequence[str], field: str, limits: Limits) -> None:
    if len(values) > limits.max_list:
        raise InvalidTxError(f"{field}: more than {limits.max_list} entries")
    for i in range(1, len(values)):
        if not values[i - 1] < values[i]:  # type: ignore[operator]
            raise InvalidTxError(f"{field}: must be sorted and unique")


def check_shape(tx: Tx, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise :class:`InvalidTxError` naming the first field out of shape."""
    _key(tx.sender, "sender", limits)
    if not 0 <= tx.nonce <= MAX_UINT64:
        raise InvalidTxError("nonce: out of range")
    if len(tx.signature) != SIGNATURE_SIZE:
        raise InvalidTxError(f"signature: must be {SIGNATURE_SIZE} bytes")
    _text(tx.chain_id, "chain_id", limits)
    _check_body(tx.body, limits)


def _check_body(body: Body, limits: Limits) -> None:
    if isinstance(body, RecordAccess):
        _id(body.record_id, "record_id", limits)
        _text(body.purpose, "purpose", limits)
        if body.consent_id is not None:
            _id(body.consent_id, "consent_id", limits)
            if body.emergency_reason is not None:
                raise InvalidTxError("emergency_reason: not allowed with consent_id")
        if body.emergency_reason is not None:
            _text(body.emergency_reason, "emergency_reason", limits)
    elif isinstance(body, AnchorRecord):
        _id(body.record_id, "record_id", limits)
        _key(body.patient, "patient", limits)
        _text(body.category, "category", limits)
        _key(body.custodian, "custodian", limits)
        _hash(body.blob_hash, "blob_hash")
        if not body.readers:
            raise InvalidTxError("readers: must not be empty")
        _sorted_unique(body.readers, "readers", limits)
        for reader in body.readers:
            _key(reader, "readers", limits)
        if body.patient not in body.readers or body.custodian not in body.readers:
            raise InvalidTxError("readers: must include the patient and the custodian")
        if body.supersedes is not None:
            _id(body.supersedes, "supersedes", limits)
            if body.supersedes == body.record_id:
                raise InvalidTxError("supersedes: a record cannot supersede itself")
    elif isinstance(body, GrantConsent):
        _id(body.consent_id, "consent_id", limits)
        _key(body.grantee, "grantee", limits)
        _sorted_unique(body.categories, "categories", limits)
        for category in body.categories:
            _text(category, "categories", limits)
        _sorted_unique(body.record_ids, "record_ids", limits)
        for record_id in body.record_ids:
            _id(record_id, "record_ids", limits)
        if not body.categories and not body.record_ids:
            raise InvalidTxError("categories: scope is empty (no categories, no record_ids)")
        _text(body.purpose, "purpose", limits)
        if not 0 <= body.not_before_ms < body.not_after_ms <= MAX_TIME_MS:
            raise InvalidTxError("not_after_ms: window must satisfy 0 <= not_before < not_after")
    elif isinstance(body, KeyRelease):
        _id(body.record_id, "record_id", limits)
        _key(body.reader, "reader", limits)
        _hash(body.wrap_blob_hash, "wrap_blob_hash")
    elif isinstance(body, RevokeConsent):
        _id(body.consent_id, "consent_id", limits)
    elif isinstance(body, EraseRecord):
        _id(body.record_id, "record_id", limits)
    elif isinstance(body, RegisterClinician):
        _key(body.clinician, "clinician", limits)
        _text(body.display_name, "display_name", limits)
    elif isinstance(body, RegisterPatient):
        _key(body.patient, "patient", limits)
    elif isinstance(body, RegisterOrganization):
        _key(body.org, "org", limits)
        _text(body.name, "name", limits)
    elif isinstance(body, ValidatorSetChange):
        for field, keys in (("add", body.add), ("remove", body.remove)):
            _sorted_unique(keys, field, limits)
            for key in keys:
                _key(key, field, limits)
