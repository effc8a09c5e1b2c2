"""FHIR on the client: records are validated R4B resources; consents and audit export as FHIR.

Validation uses the maintained ``fhir.resources`` R4B models (pydantic). An
invalid resource is refused *before* anything is encrypted or submitted,
with an :class:`~node.clinical.errors.InvalidFhirError` whose message names
the field (``Observation.status: ...``) but never quotes the input value.

Exports:

* :func:`consent_to_fhir` / :func:`consent_from_fhir`: a ledger grant as a FHIR
  ``Consent`` (scope patient-privacy, provision permit with the grantee as
  actor, categories as ``provision.class``, record ids as ``provision.data``,
  purpose, validity period, and the break-glass permission as an extension);
* :func:`audit_event` / :func:`audit_bundle`: entries of a patient's access
  log as ``AuditEvent`` resources in a ``Bundle``; break-glass entries carry
  the ``BTG`` security label, refusals outcome ``4``.

Every export is validated by the same models before it is returned.
Identities are referenced by their public key (``urn:medledger:key``),
never by a name.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class

from node.clinical.errors import InvalidFhirError

KEY_SYSTEM = "urn:medledger:key"
RECORD_SYSTEM = "urn:medledger:record"
CONSENT_SYSTEM = "urn:medledger:consent"
CATEGORY_SYSTEM = "urn:medledger:category"
EMERGENCY_EXT = "urn:medledger:consent:emergency-allowed"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MAX_ERRORS_SHOWN = 3
MAX_CODE_LEN = 64


@dataclass(frozen=True, slots=True)
class FhirResource:
    """A validated resource: its type and the exact JSON bytes to encrypt."""

    resource_type: str
    data: bytes

    def as_dict(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data)
        return value


def _field_path(resource_type: str, loc: Sequence[int | str]) -> str:
    path = resource_type
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _model(resource_type: str) -> Any:
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise InvalidFhirError(
            f"resourceType: {resource_type[:40]!r} is not a FHIR R4B resource"
        ) from None


def validate_resource(data: bytes | str | Mapping[str, Any]) -> FhirResource:
    """Validate a FHIR R4B resource (JSON bytes/text or a parsed object).

    Returns the resource re-serialised by the model (compact JSON, empty
    fields dropped): the bytes every reader will decrypt. Raises
    :class:`InvalidFhirError` naming the first offending fields.
    """
    if isinstance(data, Mapping):
        obj: Any = dict(data)
    else:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidFhirError("resource: not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidFhirError("resource: expected a JSON object")
    resource_type = obj.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise InvalidFhirError("resourceType: missing or not a string")
    model = _model(resource_type)
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as exc:
        problems = [
            f"{_field_path(resource_type, err['loc'])}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS_SHOWN]
        ]
        more = exc.error_count() - len(problems)
        suffix = f" (+{more} more)" if more > 0 else ""
        raise InvalidFhirError("; ".join(problems) + suffix) from None
    return FhirResource(resource_type, parsed.model_dump_json(exclude_none=True).encode())


def default_category(resource: FhirResource) -> str:
    """The record category a consent scope names: an Observation's category code, else the type.

    E.g. ``vital-signs`` or ``laboratory`` for Observations, ``condition`` for
    a Condition. Explicit categories (``record put --category``) override it.
    """
    obj = resource.as_dict()
    for cat in obj.get("category") or []:
        if not isinstance(cat, dict):
            continue
        for coding in cat.get("coding") or []:
            code = coding.get("code") if isinstance(coding, dict) else None
            if isinstance(code, str) and code.isprintable() and 0 < len(code) <= MAX_CODE_LEN:
                return code
    return resource.resource_type.lower()


def _validated(resource: dict[str, Any]) -> dict[str, Any]:
    """Run an export through its model; a failure here is our bug, so it raises loudly."""
    model = _model(str(resource["resourceType"]))
    parsed = model.model_validate(resource)
    out: dict[str, Any] = json.loads(parsed.model_dump_json(exclude_none=True))
    return out


def iso_instant(time_ms: int) -> str:
    """FHIR ``instant``: UTC with milliseconds, e.g. ``2026-11-27T00:00:00.000Z``."""
    t = dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ms % 1000:03d}Z"


def parse_instant(value: str) -> int:
    """Unix milliseconds of a FHIR dateTime/instant with a time zone (or a bare date, UTC)."""
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFhirError(f"period: {value[:40]!r} is not a FHIR dateTime") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def _key_ref(key_hex: str) -> dict[str, Any]:
    return {"identifier": {"system": KEY_SYSTEM, "value": key_hex}}


# --- Consent -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """A consent grant in client terms (hex ids), convertible to and from FHIR."""

    grantee: str
    categories: tuple[str, ...]
    record_ids: tuple[str, ...]
    purpose: str
    not_before_ms: int
    not_after_ms: int
    emergency_allowed: bool


def consent_to_fhir(
    terms: GrantTerms,
    patient: str,
    *,
    consent_id: str | None = None,
    status: str = "active",
    granted_ms: int | None = None,
) -> dict[str, Any]:
    """A validated FHIR R4B ``Consent`` for one grant."""
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {
            "start": iso_instant(terms.not_before_ms),
            "end": iso_instant(terms.not_after_ms),
        },
        "actor": [
            {
                "role": {"coding": [{"system": PARTICIPATION, "code": "IRCP"}]},
                "reference": _key_ref(terms.grantee),
            }
        ],
        "purpose": [{"system": ACT_REASON, "code": terms.purpose}],
    }
    if terms.categories:
        provision["class"] = [{"system": CATEGORY_SYSTEM, "code": c} for c in terms.categories]
    if terms.record_ids:
        provision["data"] = [
            {
                "meaning": "instance",
                "reference": {"identifier": {"system": RECORD_SYSTEM, "value": r}},
            }
            for r in terms.record_ids
        ]
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": _key_ref(patient),
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
        "extension": [{"url": EMERGENCY_EXT, "valueBoolean": terms.emergency_allowed}],
    }
    if consent_id is not None:
        resource["identifier"] = [{"system": CONSENT_SYSTEM, "value": consent_id}]
    if granted_ms is not None:
        resource["dateTime"] = iso_instant(granted_ms)
    return _validated(resource)


def _key_of(ref: Any, what: str) -> str:
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    value = ident.get("value") if isinstance(ident, dict) else None
    if not isinstance(value, str):
        raise InvalidFhirError(f"{what}: needs identifier.value (a public key in hex)")
    return value


def consent_from_fhir(data: bytes | str | Mapping[str, Any]) -> GrantTerms:
    """Read the grant terms out of a FHIR Consent (as :func:`consent_to_fhir` writes them)."""
    resource = validate_resource(data)
    if resource.resource_type != "Consent":
        raise InvalidFhirError(f"resourceType: expected Consent, got {resource.resource_type}")
    obj = resource.as_dict()
    prov = obj.get("provision")
    if not isinstance(prov, dict) or prov.get("type") != "permit":
        raise InvalidFhirError("Consent.provision: a permit provision is required")
    actors = prov.get("actor") or []
    if len(actors) != 1:
        raise InvalidFhirError("Consent.provision.actor: exactly one grantee is required")
    grantee = _key_of(actors[0].get("reference"), "Consent.provision.actor[0].reference")
    purposes = prov.get("purpose") or []
    if len(purposes) != 1 or not isinstance(purposes[0].get("code"), str):
        raise InvalidFhirError("Consent.provision.purpose: exactly one purpose code is required")
    period = prov.get("period") or {}
    if "start" not in period or "end" not in period:
        raise InvalidFhirError("Consent.provision.period: start and end are required")
    categories = tuple(sorted({str(c.get("code")) for c in prov.get("class") or []}))
    record_ids = tuple(
        sorted(
            {
                _key_of(d.get("reference"), "Consent.provision.data.reference")
                for d in prov.get("data") or []
            }
        )
    )
    if not categories and not record_ids:
        raise InvalidFhirError("Consent.provision: needs class (categories) or data (records)")
    emergency = any(
        e.get("url") == EMERGENCY_EXT and e.get("valueBoolean") is True
        for e in obj.get("extension") or []
    )
    return GrantTerms(
        grantee=grantee,
        categories=categories,
        record_ids=record_ids,
        purpose=purposes[0]["code"],
        not_before_ms=parse_instant(period["start"]),
        not_after_ms=parse_instant(period["end"]),
        emergency_allowed=emergency,
    )


# --- AuditEvent --------------------------------------------------------------------


def audit_event(entry: Mapping[str, Any], patient: str) -> dict[str, Any]:
    """A validated FHIR R4B ``AuditEvent`` for one entry of ``GET /v1/patients/{id}/audit``."""
    allowed = entry["outcome"] == "OK"
    purposes = [{"coding": [{"system": ACT_REASON, "code": str(entry["purpose"])}]}]
    if entry.get("emergency_reason"):
        purposes.append(
            {"coding": [{"system": ACT_REASON, "code": str(entry["emergency_reason"])}]}
        )
    entities: list[dict[str, Any]] = [
        {
            "what": {"identifier": {"system": RECORD_SYSTEM, "value": entry["record_id"]}},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
            },
            "description": f"category {entry.get('category') or 'unknown'}",
        },
        {
            "what": _key_ref(patient),
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
            },
        },
    ]
    agent: dict[str, Any] = {"who": _key_ref(entry["reader"]), "requestor": True}
    if entry.get("reader_org"):
        agent["policy"] = [f"{KEY_SYSTEM}:{entry['reader_org']}"]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{entry['tx_hash'][:32]}",
        "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "recorded": iso_instant(int(entry["time_ms"])),
        "outcome": "0" if allowed else "4",
        "outcomeDesc": f"{entry['outcome']} ({entry['reason']})",
        "purposeOfEvent": purposes,
        "agent": [agent],
        "source": {
            "site": "medledger",
            "observer": {"identifier": {"system": "urn:medledger:tx", "value": entry["tx_hash"]}},
        },
        "entity": entities,
    }
    if entry.get("emergency"):
        resource["meta"] = {"security": [{"system": ACT_REASON, "code": "BTG"}]}
    return _validated(resource)


def audit_bundle(audit: Mapping[str, Any]) -> dict[str, Any]:
    """A validated ``Bundle`` (type collection) of every entry's AuditEvent."""
    patient = str(audit["patient"])
    entries = [{"resource": audit_event(e, patient)} for e in audit["entries"]]
    return _validated({"resourceType": "Bundle", "type": "collection", "entry": entries})


def consent_bundle(consents: Sequence[Mapping[str, Any]], patient: str) -> dict[str, Any]:
    """A validated ``Bundle`` of FHIR Consents from the ``consents`` of an audit read."""
    entries = []
    for item in consents:
        g = item["grant"]
        terms = GrantTerms(
            grantee=str(g["grantee"]),
            categories=tuple(g["categories"]),
            record_ids=tuple(g["record_ids"]),
            purpose=str(g["purpose"]),
            not_before_ms=int(g["not_before_ms"]),
            not_after_ms=int(g["not_after_ms"]),
            emergency_allowed=bool(g["emergency_allowed"]),
        )
        status = "active" if item.get("revoked_at") is None else "inactive"
        resource = consent_to_fhir(
            terms, patient, consent_id=str(item["consent_id"]), status=status
        )
        entries.append({"resource": resource})
    return _validated({"resourceType": "Bundle", "type": "collection", "entry": entries})
