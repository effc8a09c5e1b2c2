"""Consent evaluation: who may read a record, decided by a pure function.

:func:`evaluate_access` does no I/O and reads no clock: apply gathers the facts
from state (the record, the reader's role, the patient's grants to the reader
and to the reader's organisation) and passes the block's time and height, so
every node reaches the same decision and a test can check it exhaustively.

Rules, in order:

1. an erased record is never readable (``ERASED``);
2. the patient may always read (``PATIENT``);
3. the custodian organisation and its clinicians may always read (``CUSTODIAN``);
4. anyone else needs a *covering* grant: from the record's patient, to the
   reader or to the reader's organisation (a clinician's employer), not revoked
   (a revocation committed at height ``r`` is in force at every height >= ``r``;
   within a block apply runs txs in order, so it binds every later tx), with
   ``not_before_ms <= time_ms < not_after_ms``, and whose scope names the
   record's category or its id. If the request names a consent id, only that
   grant is considered;
5. without an emergency reason: a covering grant for the requested purpose
   allows (``CONSENT``); ``purpose=None`` (a key release) accepts any purpose;
6. with an emergency reason (break-glass): the reason must be one of the
   policy's codes; a covering grant with ``emergency_allowed`` allows
   (``EMERGENCY_CONSENT``, any purpose), else a registered clinician is allowed
   when the policy enables break-glass (``BREAK_GLASS``).

The first matching grant in consent-id order is the one reported as used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.tx import GrantConsent

# Reason codes of an AccessDecision (stable: they land in audit entries).
PATIENT = "PATIENT"
CUSTODIAN = "CUSTODIAN"
CONSENT = "CONSENT"
EMERGENCY_CONSENT = "EMERGENCY_CONSENT"
BREAK_GLASS = "BREAK_GLASS"
ERASED = "ERASED"
NO_CONSENT = "NO_CONSENT"
BAD_REASON = "BAD_EMERGENCY_REASON"
NO_EMERGENCY = "EMERGENCY_NOT_ALLOWED"

# Break-glass reason codes a genesis policy may allow (HL7 v3 ActReason subset).
KNOWN_EMERGENCY_REASONS = ("BTG", "ERTREAT", "ETREAT", "PUBHLTH", "THREAT")


@dataclass(frozen=True, slots=True)
class RecordFacts:
    record_id: bytes
    patient: bytes
    category: str
    custodian: bytes
    erased: bool


@dataclass(frozen=True, slots=True)
class ReaderFacts:
    """The reader's role: ``clinician_of`` is its employer if it is a registered clinician."""

    key: bytes
    is_organisation: bool = False
    clinician_of: bytes | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A grant as stored: who granted it and the height its revocation committed."""

    patient: bytes
    grant: GrantConsent
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class BreakGlassPolicy:
    enabled: bool
    reason_codes: frozenset[str]


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    reason: str
    consent_id: bytes | None = None
    emergency: bool = False


def is_active(candidate: Candidate, time_ms: int, height: int) -> bool:
    grant = candidate.grant
    return (candidate.revoked_at is None or height < candidate.revoked_at) and (
        grant.not_before_ms <= time_ms < grant.not_after_ms
    )


def covers(grant: GrantConsent, record: RecordFacts) -> bool:
    return record.category in grant.categories or record.record_id in grant.record_ids


def evaluate_access(
    record: RecordFacts,
    reader: ReaderFacts,
    candidates: Iterable[Candidate],
    *,
    time_ms: int,
    height: int,
    purpose: str | None,
    policy: BreakGlassPolicy,
    consent_id: bytes | None = None,
    emergency_reason: str | None = None,
) -> AccessDecision:
    """Decide one read; see the module docstring for the rules."""
    if record.erased:
        return AccessDecision(False, ERASED)
    if reader.key == record.patient:
        return AccessDecision(True, PATIENT)
    if (reader.is_organisation and reader.key == record.custodian) or (
        reader.clinician_of is not None and reader.clinician_of == record.custodian
    ):
        return AccessDecision(True, CUSTODIAN)
    principals = {reader.key}
    if reader.clinician_of is not None:
        principals.add(reader.clinician_of)
    covering = sorted(
        (
            c
            for c in candidates
            if c.patient == record.patient
            and c.grant.grantee in principals
            and (consent_id is None or c.grant.consent_id == consent_id)
            and is_active(c, time_ms, height)
            and covers(c.grant, record)
        ),
        key=lambda c: c.grant.consent_id,
    )
    if emergency_reason is None:
        for c in covering:
            if purpose is None or c.grant.purpose == purpose:
                return AccessDecision(True, CONSENT, c.grant.consent_id)
        return AccessDecision(False, NO_CONSENT)
    if emergency_reason not in policy.reason_codes:
        return AccessDecision(False, BAD_REASON)
    for c in covering:
        if c.grant.emergency_allowed:
            return AccessDecision(True, EMERGENCY_CONSENT, c.grant.consent_id, emergency=True)
    if policy.enabled and reader.clinician_of is not None:
        return AccessDecision(True, BREAK_GLASS, emergency=True)
    return AccessDecision(False, NO_EMERGENCY)
