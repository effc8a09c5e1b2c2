"""Client library without a node: invalid FHIR never leaves the client; disclosures report."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from node.clinical.client import ClinicalClient, disclosures
from node.clinical.errors import ApiError, InvalidFhirError
from tests.clinical.helpers import seeded_key


def _client(requests: list[httpx.Request]) -> ClinicalClient:
    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.url.path == "/v1/status":
            return httpx.Response(200, json={"chain_id": "c"})
        if request.url.path.startswith("/v1/accounts/"):
            return httpx.Response(200, json={"org": "aa" * 32, "next_nonce": 0})
        return httpx.Response(
            403, json={"error": {"code": "CONSENT_DENIED", "message": "no consent"}}
        )

    return ClinicalClient("http://node", http=httpx.Client(transport=httpx.MockTransport(handler)))


@pytest.mark.parametrize(
    ("resource", "field"),
    [
        ({"resourceType": "Observation", "code": {"text": "x"}}, "Observation.status"),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "valueQuantity": {"value": "abc"},
            },
            "Observation.valueQuantity.value",
        ),
    ],
)
def test_invalid_fhir_is_refused_before_anything_is_sent(
    resource: dict[str, Any], field: str
) -> None:
    requests: list[httpx.Request] = []
    client = _client(requests)
    with pytest.raises(InvalidFhirError, match=field):
        client.put_record(seeded_key("d1"), b"\x01" * 32, resource)
    assert requests == []


def test_api_errors_carry_status_and_code() -> None:
    requests: list[httpx.Request] = []
    client = _client(requests)
    with pytest.raises(ApiError) as err:
        client.audit(seeded_key("p"), b"\x01" * 32)
    assert (err.value.status, err.value.code) == (403, "CONSENT_DENIED")
    (request,) = requests
    assert request.headers["x-medledger-key"] == seeded_key("p").public_key.hex()


def _row(seq: int, t: int, reader: str, outcome: str = "OK", **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "time_ms": t,
        "reader": reader,
        "reader_org": "00" * 32,
        "record_id": "dd" * 16,
        "category": "vital-signs",
        "purpose": "TREAT",
        "outcome": outcome,
        "reason": "CONSENT",
        "emergency": False,
        "consent_id": None,
        "emergency_reason": None,
        "tx_hash": f"{seq:064x}",
    }
    row.update(extra)
    return row


def test_disclosures_are_released_accesses_by_others_in_the_period() -> None:
    patient = "ee" * 32
    audit = {
        "patient": patient,
        "entries": [
            _row(0, 1000, "aa" * 32),
            _row(1, 2000, "bb" * 32, outcome="CONSENT_DENIED"),  # refused: not a disclosure
            _row(2, 3000, patient),  # the patient's own read
            _row(3, 4000, "cc" * 32, emergency=True, emergency_reason="ETREAT"),
            _row(4, 9000, "aa" * 32),
        ],
    }
    rows = disclosures(audit, since_ms=1000, until_ms=9000)
    assert [r["who"] for r in rows] == ["aa" * 32, "cc" * 32]
    assert rows[1]["emergency"] is True and rows[1]["emergency_reason"] == "ETREAT"
    assert {"time_ms", "who", "record_id", "purpose"} <= set(rows[0])
    assert len(disclosures(audit)) == 3
