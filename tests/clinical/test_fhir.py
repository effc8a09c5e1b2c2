"""FHIR: invalid resources refused naming the field; Consent and AuditEvent exports validate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from node.clinical.errors import InvalidFhirError
from node.clinical.fhir import (
    GrantTerms,
    audit_bundle,
    audit_event,
    consent_bundle,
    consent_from_fhir,
    consent_to_fhir,
    default_category,
    iso_instant,
    parse_instant,
    validate_resource,
)

MARKER = "PLAINTEXT-MARKER-7f3a"


def observation(**extra: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "beats/minute"},
        "note": [{"text": MARKER}],
    }
    obs.update(extra)
    return obs


def test_valid_observation_keeps_its_content() -> None:
    res = validate_resource(json.dumps(observation()).encode())
    assert res.resource_type == "Observation"
    assert MARKER.encode() in res.data
    assert validate_resource(res.data).data == res.data  # stable
    assert default_category(res) == "vital-signs"


def test_default_category_falls_back_to_type() -> None:
    res = validate_resource({"resourceType": "Condition", "subject": {"reference": "Patient/x"}})
    assert default_category(res) == "condition"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o.pop("status"), "Observation.status"),
        (lambda o: o.update(status=5), "Observation.status"),
        (lambda o: o.update(valueQuantity={"value": "abc"}), "Observation.valueQuantity.value"),
        (lambda o: o.update(subject=7), "Observation.subject"),
        (lambda o: o.pop("code"), "Observation.code"),
    ],
)
def test_invalid_fhir_names_the_field(mutate: Any, field: str) -> None:
    obs = observation()
    mutate(obs)
    with pytest.raises(InvalidFhirError) as err:
        validate_resource(obs)
    assert err.value.code == "INVALID_FHIR"
    assert field in err.value.message
    assert MARKER not in err.value.message  # never quotes the input


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"status": "final"}', "resourceType"),
        (b'{"resourceType": "Nonsense"}', "resourceType"),
    ],
)
def test_not_a_resource(data: bytes, field: str) -> None:
    with pytest.raises(InvalidFhirError, match=field):
        validate_resource(data)


TERMS = GrantTerms(
    grantee="ab" * 32,
    categories=("laboratory", "vital-signs"),
    record_ids=("cd" * 16,),
    purpose="TREAT",
    not_before_ms=1_700_000_000_000,
    not_after_ms=1_800_000_000_123,
    emergency_allowed=True,
)


def test_consent_round_trip_and_validates() -> None:
    resource = consent_to_fhir(TERMS, "ef" * 32, consent_id="01" * 16, granted_ms=1_700_000_000_5)
    get_fhir_model_class("Consent").model_validate(resource)  # raises if invalid
    assert resource["provision"]["type"] == "permit"
    assert consent_from_fhir(json.dumps(resource)) == TERMS
    assert consent_from_fhir(resource) == TERMS


def test_consent_from_fhir_needs_a_grantee() -> None:
    resource = consent_to_fhir(TERMS, "ef" * 32)
    resource["provision"]["actor"] = []
    with pytest.raises(InvalidFhirError, match="actor"):
        consent_from_fhir(resource)


def test_consent_bundle_marks_revoked_inactive() -> None:
    grant = {
        "grantee": TERMS.grantee,
        "categories": list(TERMS.categories),
        "record_ids": list(TERMS.record_ids),
        "purpose": "TREAT",
        "not_before_ms": TERMS.not_before_ms,
        "not_after_ms": TERMS.not_after_ms,
        "emergency_allowed": False,
        "consent_id": "01" * 16,
    }
    bundle = consent_bundle(
        [
            {"consent_id": "01" * 16, "grant": grant, "granted_at": 3, "revoked_at": None},
            {"consent_id": "02" * 16, "grant": grant, "granted_at": 4, "revoked_at": 9},
        ],
        "ef" * 32,
    )
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert [e["resource"]["status"] for e in bundle["entry"]] == ["active", "inactive"]


def _entry(**extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "seq": 0,
        "height": 3,
        "index": 0,
        "time_ms": 1_700_000_000_042,
        "tx_hash": "aa" * 32,
        "reader": "bb" * 32,
        "reader_org": "cc" * 32,
        "record_id": "dd" * 16,
        "category": "vital-signs",
        "purpose": "TREAT",
        "outcome": "OK",
        "reason": "CONSENT",
        "emergency": False,
        "consent_id": "01" * 16,
        "emergency_reason": None,
    }
    entry.update(extra)
    return entry


def test_audit_events_validate_and_flag_emergencies() -> None:
    denied = audit_event(_entry(outcome="CONSENT_DENIED", reason="NO_CONSENT"), "ef" * 32)
    assert denied["outcome"] == "4"
    emergency = audit_event(
        _entry(emergency=True, reason="BREAK_GLASS", emergency_reason="ETREAT"), "ef" * 32
    )
    assert emergency["meta"]["security"][0]["code"] == "BTG"
    assert {"ETREAT", "TREAT"} == {c["coding"][0]["code"] for c in emergency["purposeOfEvent"]}
    bundle = audit_bundle({"patient": "ef" * 32, "entries": [_entry(), _entry(seq=1)]})
    parsed = get_fhir_model_class("Bundle").model_validate(bundle)
    assert len(parsed.entry) == 2  # type: ignore[attr-defined]
    for e in bundle["entry"]:
        get_fhir_model_class("AuditEvent").model_validate(e["resource"])
        assert e["resource"]["recorded"].startswith("2023-11-14T22:13:20.042")


def test_instants() -> None:
    assert iso_instant(1_700_000_000_042) == "2023-11-14T22:13:20.042Z"
    assert parse_instant("2023-11-14T22:13:20.042Z") == 1_700_000_000_042
    assert parse_instant("2023-11-14") == 1_699_920_000_000
    with pytest.raises(InvalidFhirError):
        parse_instant("yesterday")
