"""What a node answers to the signed reads of patient data.

``GET /v1/records/{id}?access=<tx>``: the reader first commits a
:class:`~ledger.tx.RecordAccess` (the audit entry: apply evaluates the consent
rules and records the outcome, refusals included), then asks for the data
naming that tx. The node releases the ciphertext and *that reader's* key wrap
only if

* the access tx is committed, was sent by the reader and names this record;
* its committed outcome is ``OK`` (``CONSENT_DENIED`` -> 403, ``ERASED`` -> 410);
* it is recent (``access_ttl_ms`` of wall clock), and, for a consent-based
  access, the rules still allow it now: a revocation committed since closes
  the door at once. A break-glass access stays valid for its TTL;
* the record is not erased (410) and a wrap for the reader exists; when the
  custodian's automatic key release has not committed yet, 503
  ``KEY_RELEASE_PENDING`` tells the client to retry.

So nothing is ever released before its audit entry is final, and a denied
read is on chain, in the patient's log, before the 403 goes out.

``GET /v1/patients/{id}/audit``: the patient's access log (every entry, with
its block time, the record's category and the reader's organisation) and
the patient's consents. Only the patient and the organisation that
registered the patient may read it (the covered entity owes the patient the
accounting of disclosures).

Pure reads of committed state and blobs, on the caller's thread; wall clock
only through ``clock_ms``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ledger import codec, consent
from ledger.blob import KeyWrap, RecordBlob, WrapBlob, decode_blob
from ledger.block import Block
from ledger.consent import BreakGlassPolicy, Candidate, ReaderFacts, RecordFacts
from ledger.errors import (
    ConsentDeniedError,
    CorruptionError,
    ErasedError,
    LedgerError,
    NotFoundError,
    UnauthorizedError,
)
from ledger.results import OK, decode_results
from ledger.state import (
    KIND_CLINICIAN,
    KIND_ORGANISATION,
    AuditEntry,
    Identity,
    RecordMeta,
    StateView,
)
from ledger.tx import RecordAccess, Tx
from node.clinical.errors import (
    AccessExpiredError,
    AccessPendingError,
    AccessRequiredError,
    BlobUnavailableError,
    KeyReleasePendingError,
)
from node.clinical.index import PatientIndex

DEFAULT_ACCESS_TTL_MS = 5 * 60 * 1000


class ReadStore(Protocol):
    """The committed store as the reads use it (a :class:`storage.store.Store`)."""

    def get_state(self, key: bytes) -> bytes | None: ...

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]: ...

    def get_tree_node(self, node_id: bytes) -> bytes | None: ...

    def get_blob(self, blob_hash: bytes) -> bytes | None: ...

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None: ...

    def get_results(self, height: int) -> bytes | None: ...

    def get_block_bytes(self, height: int) -> bytes | None: ...

    def latest_height(self) -> int | None: ...


def reader_facts(key: bytes, ident: Identity | None) -> ReaderFacts:
    if ident is None:
        return ReaderFacts(key)
    return ReaderFacts(
        key,
        is_organisation=ident.kind == KIND_ORGANISATION,
        clinician_of=ident.org if ident.kind == KIND_CLINICIAN else None,
    )


def record_facts(record_id: bytes, record: RecordMeta) -> RecordFacts:
    return RecordFacts(
        record_id, record.patient, record.category, record.custodian, record.erased_at is not None
    )


def candidates(view: StateView, patient: bytes, reader: ReaderFacts) -> list[Candidate]:
    """The patient's grants to the reader or the reader's organisation, as apply gathers them."""
    ids = view.grant_ids(patient, reader.key)
    if reader.clinician_of is not None:
        ids += view.grant_ids(patient, reader.clinician_of)
    out: list[Candidate] = []
    for cid in ids:
        entry = view.consent(cid)
        if entry is not None:
            out.append(Candidate(entry.patient, entry.grant, entry.revoked_at))
    return out


def evaluate_now(
    view: StateView,
    record_id: bytes,
    record: RecordMeta,
    reader: bytes,
    *,
    time_ms: int,
    height: int,
    policy: BreakGlassPolicy,
    purpose: str | None,
    consent_id: bytes | None = None,
) -> consent.AccessDecision:
    """The consent rules for ``reader`` on the given state, time and height (no emergency)."""
    facts = reader_facts(reader, view.identity(reader))
    return consent.evaluate_access(
        record_facts(record_id, record),
        facts,
        candidates(view, record.patient, facts),
        time_ms=time_ms,
        height=height,
        purpose=purpose,
        policy=policy,
        consent_id=consent_id,
    )


def record_blob(store: ReadStore, record: RecordMeta) -> RecordBlob:
    """The record's stored blob; ``BlobUnavailableError`` if this node never got it."""
    raw = store.get_blob(record.blob_hash)
    if raw is None:
        raise BlobUnavailableError("this node does not hold the record's blob")
    try:
        blob = decode_blob(raw)
    except LedgerError:
        raise CorruptionError("stored record blob does not decode") from None
    if not isinstance(blob, RecordBlob):
        raise CorruptionError("stored record blob is not a record blob")
    return blob


def wrap_of(
    store: ReadStore, record_id: bytes, record: RecordMeta, reader: bytes
) -> KeyWrap | None:
    """``reader``'s committed key wrap of a record (record blob or key-release blob), or None."""
    entry = next((r for r in record.readers if r.reader == reader), None)
    if entry is None:
        return None
    if entry.wrap_blob_hash is None:
        wraps = record_blob(store, record).wraps
    else:
        raw = store.get_blob(entry.wrap_blob_hash)
        if raw is None:
            raise BlobUnavailableError("this node does not hold the reader's key-release blob")
        try:
            extra = decode_blob(raw)
        except LedgerError:
            raise CorruptionError("stored key-release blob does not decode") from None
        if not isinstance(extra, WrapBlob) or extra.record_id != record_id:
            raise CorruptionError("stored key-release blob does not match its record")
        wraps = extra.wraps
    for w in wraps:
        if w.reader == reader:
            return w
    raise CorruptionError("a committed reader has no wrap in its blob")


class ClinicalReads:
    """The node's answers to signed record and audit reads (see the module docstring)."""

    def __init__(
        self,
        store: ReadStore,
        policy: BreakGlassPolicy,
        index: PatientIndex,
        *,
        clock_ms: Callable[[], int],
        access_ttl_ms: int = DEFAULT_ACCESS_TTL_MS,
    ) -> None:
        self._store = store
        self._policy = policy
        self._index = index
        self._clock_ms = clock_ms
        self._ttl_ms = access_ttl_ms

    # -- helpers -----------------------------------------------------------------

    def _block(self, height: int) -> Block:
        raw = self._store.get_block_bytes(height)
        if raw is None:
            raise CorruptionError(f"committed block {height} is missing")
        return codec.decode(raw, Block)

    def _committed_tx(self, txh: bytes) -> tuple[Tx, str, int, int]:
        """(tx, result code, height, block time) of a committed tx, or AccessPendingError."""
        loc = self._store.tx_location(txh)
        if loc is None:
            raise AccessPendingError(f"access tx {txh.hex()[:16]} is not committed on this node")
        height, index = loc
        block = self._block(height)
        raw_results = self._store.get_results(height)
        if raw_results is None or index >= len(block.txs):
            raise CorruptionError(f"results of block {height} are missing")
        return (
            block.txs[index],
            decode_results(raw_results)[index].code,
            height,
            block.header.time_ms,
        )

    # -- GET /v1/records/{id} ----------------------------------------------------

    def read_record(
        self, record_id: bytes, reader: bytes, access_tx: bytes | None
    ) -> dict[str, Any]:
        view = StateView(self._store)
        record = view.record(record_id)
        if record is None:
            raise NotFoundError(f"record {record_id.hex()[:16]} does not exist")
        if record.erased_at is not None:
            raise ErasedError(
                f"record {record_id.hex()[:16]} was erased at height {record.erased_at}"
            )
        if access_tx is None:
            raise AccessRequiredError(
                "commit a RecordAccess for this record first and name it with ?access=<tx hash>"
            )
        tx, code, height, time_ms = self._committed_tx(access_tx)
        body = tx.body
        if not isinstance(body, RecordAccess) or tx.sender != reader or body.record_id != record_id:
            raise AccessRequiredError("the access tx is not this reader's access to this record")
        if code == consent.ERASED:
            raise ErasedError(f"record {record_id.hex()[:16]} is erased")
        if code != OK:
            raise ConsentDeniedError(f"access was refused on chain ({code})")
        now = self._clock_ms()
        if now - time_ms > self._ttl_ms:
            raise AccessExpiredError(f"access tx is older than {self._ttl_ms} ms; submit a new one")
        if body.emergency_reason is None:
            latest = self._store.latest_height() or 0
            decision = evaluate_now(
                view,
                record_id,
                record,
                reader,
                time_ms=now,
                height=latest + 1,
                policy=self._policy,
                purpose=body.purpose,
                consent_id=body.consent_id,
            )
            if not decision.allowed:
                raise ConsentDeniedError(f"access is no longer allowed ({decision.reason})")
        wrap = self._wrap_for(record_id, record, reader)
        blob = self._record_blob(record)
        return {
            "record_id": record_id,
            "patient": record.patient,
            "category": record.category,
            "custodian": record.custodian,
            "supersedes": record.supersedes,
            "anchored_at": record.anchored_at,
            "nonce": blob.nonce,
            "ciphertext": blob.ciphertext,
            "sealed_key": wrap.sealed_key,
            "access": {"tx": access_tx, "height": height, "emergency": body.emergency_reason},
        }

    def _record_blob(self, record: RecordMeta) -> RecordBlob:
        return record_blob(self._store, record)

    def _wrap_for(self, record_id: bytes, record: RecordMeta, reader: bytes) -> KeyWrap:
        wrap = wrap_of(self._store, record_id, record, reader)
        if wrap is None:
            raise KeyReleasePendingError(
                "access is allowed; the custodian has not committed this reader's key yet"
            )
        return wrap

    # -- GET /v1/patients/{id}/audit ---------------------------------------------

    def patient_audit(self, patient: bytes, reader: bytes) -> dict[str, Any]:
        view = StateView(self._store)
        ident = view.patient(patient)
        if ident is None:
            raise NotFoundError("no patient is registered under that key")
        if reader not in (patient, ident.org):
            raise UnauthorizedError(
                "only the patient and its registering organisation may read its log"
            )
        times: dict[int, int] = {}
        categories: dict[bytes, str | None] = {}
        orgs: dict[bytes, bytes | None] = {}
        entries = [
            self._audit_row(view, e, times, categories, orgs) for e in view.audit_log(patient)
        ]
        consents = []
        for cid in self._index.consents_of(patient):
            entry = view.consent(cid)
            if entry is not None:
                consents.append(
                    {
                        "consent_id": cid,
                        "grant": entry.grant,
                        "granted_at": entry.granted_at,
                        "revoked_at": entry.revoked_at,
                    }
                )
        return {
            "patient": patient,
            "organisation": ident.org,
            "height": self._store.latest_height() or 0,
            "entries": entries,
            "consents": consents,
        }

    def _audit_row(
        self,
        view: StateView,
        e: AuditEntry,
        times: dict[int, int],
        categories: dict[bytes, str | None],
        orgs: dict[bytes, bytes | None],
    ) -> dict[str, Any]:
        if e.height not in times:
            times[e.height] = self._block(e.height).header.time_ms
        if e.record_id not in categories:
            rec = view.record(e.record_id)
            categories[e.record_id] = rec.category if rec is not None else None
        if e.reader not in orgs:
            who = view.identity(e.reader)
            orgs[e.reader] = who.org if who is not None else None
        return {
            "seq": e.seq,
            "height": e.height,
            "index": e.index,
            "time_ms": times[e.height],
            "tx_hash": e.tx_hash,
            "reader": e.reader,
            "reader_org": orgs[e.reader],
            "record_id": e.record_id,
            "category": categories[e.record_id],
            "purpose": e.purpose,
            "outcome": e.outcome,
            "reason": e.reason,
            "emergency": e.emergency,
            "consent_id": e.consent_id,
            "emergency_reason": e.emergency_reason,
        }
