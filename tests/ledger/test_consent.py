"""evaluate_access against a tiny reference model, over random worlds (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger.consent import (
    AccessDecision,
    BreakGlassPolicy,
    Candidate,
    ReaderFacts,
    RecordFacts,
    evaluate_access,
)
from ledger.tx import GrantConsent

# A small universe so that random grants often match.
PATIENTS = [bytes([1]) * 32, bytes([2]) * 32]
ORGS = [bytes([10]) * 32, bytes([11]) * 32]
CLINICIANS = {bytes([20]) * 32: ORGS[0], bytes([21]) * 32: ORGS[1]}
OUTSIDER = bytes([30]) * 32
RECORD_IDS = [bytes([40]) * 16, bytes([41]) * 16]
CATEGORIES = ["imaging", "lab", "notes"]
PURPOSES = ["RESEARCH", "TREAT"]
REASONS = ["BTG", "ETREAT", "WHIM"]
CONSENT_IDS = [bytes([50 + i]) * 16 for i in range(6)]


def model(record: RecordFacts, reader: ReaderFacts, grants: list[Candidate], time_ms: int,
          height: int, purpose: str | None, policy: BreakGlassPolicy,
          consent_id: bytes | None, reason: str | None) -> tuple[bool, bool]:
    """(allowed, emergency), written from the rules, not from the code."""
    if record.erased:
        return False, False
    if reader.key == record.patient:
        return True, False
    if reader.is_organisation and reader.key == record.custodian:
        return True, False
    if reader.clinician_of == record.custodian:
        return True, False
    usable = []
    for c in grants:
        g = c.grant
        if c.patient != record.patient:
            continue
        if g.grantee != reader.key and (reader.clinician_of is None
                                        or g.grantee != reader.clinician_of):
            continue
        if consent_id is not None and g.consent_id != consent_id:
            continue
        if c.revoked_at is not None and c.revoked_at <= height:
            continue
        if time_ms < g.not_before_ms or time_ms >= g.not_after_ms:
            continue
        if record.category not in g.categories and record.record_id not in g.record_ids:
            continue
        usable.append(g)
    if reason is None:
        return any(purpose is None or g.purpose == purpose for g in usable), False
    if reason not in policy.reason_codes:
        return False, False
    if any(g.emergency_allowed for g in usable):
        return True, True
    if policy.enabled and reader.clinician_of is not None:
        return True, True
    return False, False


@dataclass(frozen=True)
class World:
    record: RecordFacts
    reader: ReaderFacts
    grants: list[Candidate]
    time_ms: int
    height: int
    purpose: str | None
    policy: BreakGlassPolicy
    consent_id: bytes | None
    reason: str | None


ALL_READERS = [
    *(ReaderFacts(k) for k in PATIENTS),
    *(ReaderFacts(k, is_organisation=True) for k in ORGS),
    *(ReaderFacts(k, clinician_of=org) for k, org in CLINICIANS.items()),
    ReaderFacts(OUTSIDER),
]
# Weighted towards readers who need a grant (the interesting case): the
# clinician and the organisation that are not the record's custodian.
READER_WEIGHTS = [1, 1, 1, 3, 1, 4, 1]


def readers() -> st.SearchStrategy[ReaderFacts]:
    pool = [r for r, w in zip(ALL_READERS, READER_WEIGHTS, strict=True) for _ in range(w)]
    return st.sampled_from(pool)


@st.composite
def grants(draw: st.DrawFn, record: RecordFacts, reader: ReaderFacts) -> Candidate:
    """A grant that is often *almost* right: each field matches with high odds."""

    def likely(good: object, other: st.SearchStrategy[object]) -> object:
        return good if draw(st.sampled_from((True, True, True, False))) else draw(other)

    principal = reader.clinician_of if reader.clinician_of and draw(st.booleans()) else reader.key
    start = draw(st.sampled_from(range(0, 61, 5)))
    scope_cat = likely([record.category], st.lists(st.sampled_from(CATEGORIES), max_size=2))
    scope_ids = draw(st.sets(st.sampled_from(RECORD_IDS), max_size=1))
    grant = GrantConsent(
        consent_id=draw(st.sampled_from(CONSENT_IDS[:3])),
        grantee=likely(principal, st.sampled_from([*ORGS, *CLINICIANS, OUTSIDER])),  # type: ignore[arg-type]
        categories=sorted(set(scope_cat)),  # type: ignore[call-overload]
        record_ids=sorted(scope_ids),
        purpose=draw(st.sampled_from(PURPOSES)),
        not_before_ms=start,
        not_after_ms=start + draw(st.sampled_from(range(1, 141, 7))),
        emergency_allowed=draw(st.booleans()),
    )
    revoked = None if draw(st.integers(0, 2)) else draw(st.integers(0, 12))
    patient = likely(record.patient, st.sampled_from(PATIENTS))
    return Candidate(patient, grant, revoked)  # type: ignore[arg-type]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    record = RecordFacts(
        draw(st.sampled_from(RECORD_IDS)),
        draw(st.sampled_from(PATIENTS)),
        draw(st.sampled_from(CATEGORIES)),
        draw(st.sampled_from([ORGS[0], ORGS[0], ORGS[0], ORGS[1]])),
        draw(st.sampled_from([True] + [False] * 19)),  # erased, one time in twenty
    )
    reader = draw(readers())
    emergency = draw(st.integers(0, 2)) == 0
    return World(
        record=record,
        reader=reader,
        grants=draw(st.lists(grants(record, reader), min_size=draw(st.integers(0, 1)),
                             max_size=4)),
        time_ms=draw(st.sampled_from(range(0, 201, 4))),
        height=draw(st.integers(0, 12)),
        purpose=draw(st.one_of(st.none(), st.sampled_from(PURPOSES))),
        policy=BreakGlassPolicy(draw(st.booleans()),
                                frozenset(draw(st.sets(st.sampled_from(REASONS[:2]),
                                                       min_size=1)))),
        consent_id=None if emergency or draw(st.booleans())
        else draw(st.sampled_from(CONSENT_IDS[:3])),
        reason=draw(st.sampled_from(REASONS)) if emergency else None,
    )


def decide(w: World) -> AccessDecision:
    return evaluate_access(
        w.record, w.reader, w.grants, time_ms=w.time_ms, height=w.height, purpose=w.purpose,
        policy=w.policy, consent_id=w.consent_id, emergency_reason=w.reason,
    )


@settings(max_examples=300)
@given(worlds())
def test_agrees_with_reference_model(w: World) -> None:
    decision = decide(w)
    event(decision.reason)
    expected = model(w.record, w.reader, w.grants, w.time_ms, w.height, w.purpose, w.policy,
                     w.consent_id, w.reason)
    assert (decision.allowed, decision.emergency) == expected
    if decision.consent_id is not None:
        # the consent reported as used is one of the candidates, for this patient
        used = [c for c in w.grants if c.grant.consent_id == decision.consent_id]
        assert any(c.patient == w.record.patient for c in used)
        assert w.consent_id is None or decision.consent_id == w.consent_id
    # pure: same inputs, same answer, input order irrelevant
    assert decide(w) == decision
    reordered = World(**{**w.__dict__, "grants": list(reversed(w.grants))})
    assert decide(reordered).allowed == decision.allowed


@settings(max_examples=100)
@given(worlds())
def test_revocation_never_widens_access(w: World) -> None:
    revoked = [Candidate(c.patient, c.grant, 0) for c in w.grants]
    narrowed = World(**{**w.__dict__, "grants": revoked})
    if decide(narrowed).allowed:
        assert decide(w).allowed


def test_explicit_cases() -> None:
    patient, org = PATIENTS[0], ORGS[0]
    clin = bytes([21]) * 32  # clinician of ORGS[1]
    record = RecordFacts(RECORD_IDS[0], patient, "lab", org, False)
    reader = ReaderFacts(clin, clinician_of=ORGS[1])
    policy = BreakGlassPolicy(False, frozenset({"ETREAT"}))
    g = GrantConsent(CONSENT_IDS[0], ORGS[1], ["lab"], [], "TREAT", 100, 200, False)
    cand = [Candidate(patient, g, None)]

    def at(t: int, h: int = 5, grants: list[Candidate] = cand, **kw: object) -> AccessDecision:
        return evaluate_access(record, reader, grants, time_ms=t, height=h,
                               policy=policy, **{"purpose": "TREAT", **kw})  # type: ignore[arg-type]

    assert at(99).allowed is False and at(99).reason == "NO_CONSENT"
    d = at(100)
    assert d.allowed and d.reason == "CONSENT" and d.consent_id == CONSENT_IDS[0]
    assert at(199).allowed and not at(200).allowed
    assert not at(150, purpose="RESEARCH").allowed and at(150, purpose=None).allowed
    assert at(150, h=4, grants=[Candidate(patient, g, 5)]).allowed
    assert not at(150, h=5, grants=[Candidate(patient, g, 5)]).allowed
    assert not at(150, grants=[Candidate(PATIENTS[1], g, None)]).allowed
    assert at(150, emergency_reason="ETREAT").reason == "EMERGENCY_NOT_ALLOWED"
    assert at(150, emergency_reason="BTG").reason == "BAD_EMERGENCY_REASON"
    erased = RecordFacts(RECORD_IDS[0], patient, "lab", org, True)
    assert evaluate_access(erased, ReaderFacts(patient), [], time_ms=0, height=0, purpose=None,
                           policy=policy).reason == "ERASED"
