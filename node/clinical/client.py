"""The Python client library of the clinical workflows, over a node's HTTP API.

Everything patient-related happens here, on the client: FHIR validation,
encryption (a fresh key per record, wrapped for the patient and the
custodian, plus any extra readers named), decryption, and the signing of
every tx and every read with the acting identity's own key. The node sees
ciphertext and hashes only.

A read is two steps, so that nothing is released before its audit entry is
final: :meth:`ClinicalClient.get_record` commits a ``RecordAccess`` (refusals
are committed too, and appear in the patient's log), then fetches the data
with a signed request naming that tx. While the custodian's node has not yet
committed the reader's key release (consent executes itself, within two
blocks), the node answers ``KEY_RELEASE_PENDING`` and the client retries
until its deadline.

Nonces: the next nonce is read from the node (``/v1/accounts``, which counts
this node's pending txs); if another signer of the same key raced us (a
hospital key is also used by its node for key releases), the tx is re-signed
with a fresh nonce.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from ledger import envelope
from ledger.blob import canonical_readers, seal_record
from ledger.keys import KeyPair
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    RecordAccess,
    RegisterClinician,
    RegisterPatient,
    RevokeConsent,
    make_tx,
)
from node.client import sign_request
from node.clinical.errors import ApiError, CommitTimeoutError
from node.clinical.fhir import FhirResource, GrantTerms, default_category, validate_resource

T = TypeVar("T")

RECORD_ID_BYTES = 16
CONSENT_ID_BYTES = 16
DEFAULT_PURPOSE = "TREAT"
_RETRY_NONCE = frozenset({"NONCE_PENDING", "NONCE_REPLAYED", "NONCE_GAP", "BAD_NONCE"})
_RETRY_READ = frozenset({"KEY_RELEASE_PENDING", "ACCESS_PENDING", "BLOB_UNAVAILABLE"})


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed tx: where, and its result code (``OK`` or the rule's refusal)."""

    tx_hash: bytes
    height: int
    index: int
    code: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass(frozen=True, slots=True)
class RecordRef:
    """A record written by :meth:`ClinicalClient.put_record`."""

    record_id: bytes
    category: str
    tx_hash: bytes
    tx: Committed | None  # None when submitted without waiting
    plaintext: bytes  # what every reader will decrypt (kept only in this process)


@dataclass(frozen=True, slots=True)
class RecordRead:
    """A decrypted record and the access (audit) tx that released it."""

    record_id: bytes
    plaintext: bytes
    category: str
    patient: bytes
    custodian: bytes
    supersedes: bytes | None
    access: Committed
    emergency_reason: str | None


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    code, message = f"HTTP_{response.status_code}", ""
    try:
        err = response.json().get("error", {})
        code = str(err.get("code", code))
        message = str(err.get("message", ""))
    except (ValueError, AttributeError):
        pass
    raise ApiError(response.status_code, code, message)


def _hexb(value: Any) -> bytes:
    return bytes.fromhex(str(value))


class ClinicalClient:
    """One node's API, as the hospital app, clinician or patient uses it."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        commit_timeout: float = 60.0,
        poll_interval: float = 0.1,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._own_http = http is None
        self.commit_timeout = commit_timeout
        self.poll_interval = poll_interval
        self._chain_id: str | None = None

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> ClinicalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------

    def get_json(self, path: str, *, key: KeyPair | None = None) -> Any:
        """GET ``path`` (signed by ``key`` if given); the JSON answer or :class:`ApiError`."""
        headers = sign_request(key, "GET", path) if key is not None else None
        r = self._http.get(self.url + path, headers=headers)
        _raise_for(r)
        return r.json()

    @property
    def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = str(self.get_json("/v1/status")["chain_id"])
        return self._chain_id

    def next_nonce(self, key: bytes) -> int:
        try:
            return int(self.get_json(f"/v1/accounts/{key.hex()}")["next_nonce"])
        except ApiError as exc:
            if exc.status == 404:
                return 0
            raise

    def _poll(self, attempt: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = attempt()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise CommitTimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(self.poll_interval)

    def submit(
        self, key: KeyPair, body: Body, blob: bytes | None = None, *, wait: bool = True
    ) -> Committed | bytes:
        """Sign ``body`` with ``key`` and submit it; with ``wait``, return once committed."""
        last: ApiError | None = None
        for _ in range(5):
            tx = make_tx(key, self.chain_id, self.next_nonce(key.public_key), body)
            payload: dict[str, str] = {"tx": tx.encode().hex()}
            if blob is not None:
                payload["blob"] = blob.hex()
            r = self._http.post(self.url + "/v1/txs", json=payload)
            try:
                _raise_for(r)
            except ApiError as exc:
                if exc.code not in _RETRY_NONCE:
                    raise
                last = exc
                time.sleep(self.poll_interval)
                continue
            txh = _hexb(r.json()["hash"])
            return self.wait_for_commit(txh) if wait else txh
        assert last is not None
        raise last

    def _submit_wait(self, key: KeyPair, body: Body, blob: bytes | None = None) -> Committed:
        out = self.submit(key, body, blob, wait=True)
        assert isinstance(out, Committed)
        return out

    def tx_status(self, txh: bytes, *, prove: bool = False) -> dict[str, Any]:
        suffix = "?prove=true" if prove else ""
        status: dict[str, Any] = self.get_json(f"/v1/txs/{txh.hex()}{suffix}")
        return status

    def wait_for_commit(self, txh: bytes, timeout: float | None = None) -> Committed:
        """Poll until ``txh`` is committed (whatever its result code)."""

        def attempt() -> Committed | None:
            st = self.tx_status(txh)
            if st["status"] != "committed":
                return None
            return Committed(txh, int(st["height"]), int(st["index"]), str(st["code"]))

        return self._poll(attempt, timeout or self.commit_timeout, f"tx {txh.hex()[:16]}")

    def proof(self, txh: bytes) -> dict[str, Any]:
        """The offline proof document of a committed tx (``medledger verify`` checks it)."""
        return self.tx_status(txh, prove=True)

    # -- identities --------------------------------------------------------------

    def register_clinician(self, org: KeyPair, clinician: bytes, display_name: str) -> Committed:
        return self._submit_wait(org, RegisterClinician(clinician, display_name))

    def register_patient(self, org: KeyPair, patient: bytes) -> Committed:
        return self._submit_wait(org, RegisterPatient(patient))

    def account(self, key: bytes) -> dict[str, Any]:
        account: dict[str, Any] = self.get_json(f"/v1/accounts/{key.hex()}")
        return account

    def custodian_of(self, author: bytes) -> bytes:
        """The organisation an author writes for: itself, or a clinician's employer."""
        return _hexb(self.account(author)["org"])

    # -- records -----------------------------------------------------------------

    def put_record(
        self,
        author: KeyPair,
        patient: bytes,
        resource: bytes | str | Mapping[str, Any] | FhirResource,
        *,
        category: str | None = None,
        readers: Iterable[bytes] = (),
        custodian: bytes | None = None,
        supersedes: bytes | None = None,
        record_id: bytes | None = None,
        wait: bool = True,
    ) -> RecordRef:
        """Validate, encrypt and anchor a FHIR resource; with ``wait``, return once committed.

        Invalid FHIR raises :class:`~node.clinical.errors.InvalidFhirError`
        before anything is encrypted or sent. The key is wrapped for the
        patient, the custodian, the author and ``readers``; readers with active consent
        get theirs from the custodian's node automatically.
        """
        fhir = resource if isinstance(resource, FhirResource) else validate_resource(resource)
        cat = category if category is not None else default_category(fhir)
        custodian = custodian if custodian is not None else self.custodian_of(author.public_key)
        rid = record_id if record_id is not None else os.urandom(RECORD_ID_BYTES)
        wanted = canonical_readers([patient, custodian, author.public_key, *readers])
        blob, blob_hash, _record_key = seal_record(fhir.data, rid, wanted)
        body = AnchorRecord(rid, patient, cat, custodian, blob_hash, wanted, supersedes)
        out = self.submit(author, body, blob, wait=wait)
        if not isinstance(out, Committed):
            return RecordRef(rid, cat, out, None, fhir.data)
        if not out.ok:
            raise ApiError(409, out.code, "the record was refused on chain")
        return RecordRef(rid, cat, out.tx_hash, out, fhir.data)

    def amend_record(
        self,
        author: KeyPair,
        record_id: bytes,
        resource: bytes | str | Mapping[str, Any] | FhirResource,
        *,
        patient: bytes,
        category: str | None = None,
        readers: Iterable[bytes] = (),
    ) -> RecordRef:
        """A new version that supersedes ``record_id`` (both stay auditable)."""
        return self.put_record(
            author, patient, resource, category=category, readers=readers, supersedes=record_id
        )

    def erase_record(self, patient: KeyPair, record_id: bytes) -> Committed:
        """Patient-signed crypto-shredding of a record and the versions it supersedes."""
        committed = self._submit_wait(patient, EraseRecord(record_id))
        if not committed.ok:
            raise ApiError(409, committed.code, "the erasure was refused on chain")
        return committed

    def record_access(
        self,
        reader: KeyPair,
        record_id: bytes,
        *,
        purpose: str = DEFAULT_PURPOSE,
        consent_id: bytes | None = None,
        emergency_reason: str | None = None,
    ) -> Committed:
        """Commit the audit entry of a read (allowed or refused: both are committed)."""
        body = RecordAccess(record_id, purpose, consent_id, emergency_reason)
        return self._submit_wait(reader, body)

    def fetch_record(
        self, reader: KeyPair, record_id: bytes, access: Committed, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Signed ``GET /v1/records/{id}?access=``; retries while the key release is pending."""
        path = f"/v1/records/{record_id.hex()}?access={access.tx_hash.hex()}"

        def attempt() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = self.get_json(path, key=reader)
            except ApiError as exc:
                if exc.code in _RETRY_READ:
                    return None
                raise
            return answer

        return self._poll(attempt, timeout or self.commit_timeout, "the record's key release")

    def get_record(
        self,
        reader: KeyPair,
        record_id: bytes,
        *,
        purpose: str = DEFAULT_PURPOSE,
        consent_id: bytes | None = None,
        emergency_reason: str | None = None,
        timeout: float | None = None,
    ) -> RecordRead:
        """Audit, fetch and decrypt a record as ``reader``.

        Raises :class:`ApiError` with the node's code when refused
        (``CONSENT_DENIED`` 403, ``ERASED`` 410, ``NOT_FOUND`` 404).
        """
        access = self.record_access(
            reader,
            record_id,
            purpose=purpose,
            consent_id=consent_id,
            emergency_reason=emergency_reason,
        )
        answer = self.fetch_record(reader, record_id, access, timeout=timeout)
        record_key = envelope.unwrap_key(_hexb(answer["sealed_key"]), reader)
        plaintext = envelope.decrypt_record(
            record_key, _hexb(answer["nonce"]), _hexb(answer["ciphertext"]), record_id
        )
        supersedes = answer.get("supersedes")
        return RecordRead(
            record_id=record_id,
            plaintext=plaintext,
            category=str(answer["category"]),
            patient=_hexb(answer["patient"]),
            custodian=_hexb(answer["custodian"]),
            supersedes=_hexb(supersedes) if supersedes else None,
            access=access,
            emergency_reason=emergency_reason,
        )

    # -- consent -----------------------------------------------------------------

    def grant_consent(
        self, patient: KeyPair, terms: GrantTerms, *, consent_id: bytes | None = None
    ) -> tuple[bytes, Committed]:
        """Commit a patient's grant; return its consent id and the commit."""
        cid = consent_id if consent_id is not None else os.urandom(CONSENT_ID_BYTES)
        body = GrantConsent(
            consent_id=cid,
            grantee=_hexb(terms.grantee),
            categories=sorted(set(terms.categories)),
            record_ids=sorted({_hexb(r) for r in terms.record_ids}),
            purpose=terms.purpose,
            not_before_ms=terms.not_before_ms,
            not_after_ms=terms.not_after_ms,
            emergency_allowed=terms.emergency_allowed,
        )
        committed = self._submit_wait(patient, body)
        if not committed.ok:
            raise ApiError(409, committed.code, "the grant was refused on chain")
        return cid, committed

    def revoke_consent(self, patient: KeyPair, consent_id: bytes) -> Committed:
        committed = self._submit_wait(patient, RevokeConsent(consent_id))
        if not committed.ok:
            raise ApiError(409, committed.code, "the revocation was refused on chain")
        return committed

    # -- audit -------------------------------------------------------------------

    def audit(self, reader: KeyPair, patient: bytes) -> dict[str, Any]:
        """The patient's access log and consents (signed read by the patient or its hospital)."""
        log: dict[str, Any] = self.get_json(f"/v1/patients/{patient.hex()}/audit", key=reader)
        return log


def disclosures(
    audit: Mapping[str, Any], *, since_ms: int = 0, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """The accounting of disclosures (HIPAA 164.528) of one patient over ``[since, until)``.

    Every *released* access by someone other than the patient: who (reader
    and organisation), when (block time), what (record and category), why
    (purpose, break-glass reason, consent used). Refused attempts are not
    disclosures; they stay in the full audit log.
    """
    patient = str(audit["patient"])
    rows: list[dict[str, Any]] = []
    for e in audit["entries"]:
        t = int(e["time_ms"])
        if e["outcome"] != "OK" or e["reader"] == patient:
            continue
        if t < since_ms or (until_ms is not None and t >= until_ms):
            continue
        rows.append(
            {
                "time_ms": t,
                "who": e["reader"],
                "organisation": e.get("reader_org"),
                "record_id": e["record_id"],
                "category": e.get("category"),
                "purpose": e["purpose"],
                "emergency": bool(e["emergency"]),
                "emergency_reason": e.get("emergency_reason"),
                "basis": e["reason"],
                "consent_id": e.get("consent_id"),
                "tx_hash": e["tx_hash"],
            }
        )
    return rows


def grant_terms(
    grantee: bytes,
    *,
    categories: Sequence[str] = (),
    record_ids: Sequence[bytes] = (),
    purpose: str = DEFAULT_PURPOSE,
    not_before_ms: int,
    not_after_ms: int,
    emergency_allowed: bool = False,
) -> GrantTerms:
    """Grant terms from binary ids (the CLI and tests build them this way)."""
    return GrantTerms(
        grantee=grantee.hex(),
        categories=tuple(sorted(set(categories))),
        record_ids=tuple(sorted({r.hex() for r in record_ids})),
        purpose=purpose,
        not_before_ms=not_before_ms,
        not_after_ms=not_after_ms,
        emergency_allowed=emergency_allowed,
    )
