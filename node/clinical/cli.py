"""``medledger`` commands of the clinical workflows (registered in :mod:`node.cli`).

Each command acts as one identity, given by ``--key FILE`` (a key file as
written by ``medledger keys new``), against one node (``--node URL``, or
``MEDLEDGER_NODE``). Output is JSON on stdout (``record get`` prints the
decrypted FHIR resource); a failure is one line on stderr and a non-zero
exit, through :func:`node.cli.main`: API refusals print the node's code
(``CONSENT_DENIED``, ``ERASED``, ...), invalid FHIR names the field.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click
import httpx

from ledger.errors import DecodeError
from node.api.render import to_jsonable
from node.clinical.verify import verify_files
from node.keyfile import load_key_file

if TYPE_CHECKING:
    from node.clinical.client import ClinicalClient

# The client library and the FHIR models (pydantic, slow to import) load only
# when a clinical command runs, so `medledger start` does not pay for them.

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_NODE_URL = "http://127.0.0.1:26657"
DAY_MS = 24 * 3600 * 1000


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True))


def _hex(value: str, what: str, sizes: tuple[int, ...] = (32,)) -> bytes:
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise click.BadParameter(f"{what}: expected hex") from None
    if len(out) not in sizes:
        raise click.BadParameter(f"{what}: expected {' or '.join(map(str, sizes))} bytes")
    return out


def _record_id(value: str) -> bytes:
    return _hex(value, "--record", tuple(range(16, 33)))


def _public(hex_value: str | None, key_file: Path | None, what: str) -> bytes:
    """A public key given as hex or read from a key file."""
    if (hex_value is None) == (key_file is None):
        raise click.UsageError(f"give exactly one of --{what} and --{what}-key")
    if key_file is not None:
        return load_key_file(key_file).public_key
    assert hex_value is not None
    return _hex(hex_value, f"--{what}")


def _client_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Unreachable nodes become one line (typed ledger errors go to ``node.cli.main``)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"node unreachable: {type(exc).__name__}: {exc}") from None

    return wrapper


node_option = click.option(
    "--node",
    "node_url",
    default=DEFAULT_NODE_URL,
    show_default=True,
    envvar="MEDLEDGER_NODE",
    help="the node's API base URL",
)
key_option = click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="key file of the identity acting (hospital, clinician or patient)",
)
timeout_option = click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for commit"
)


def _client(node_url: str, timeout: float = 60.0) -> ClinicalClient:
    from node.clinical.client import ClinicalClient

    return ClinicalClient(node_url, commit_timeout=timeout)


# --- identities ---------------------------------------------------------------------


@click.group("clinician")
def clinician() -> None:
    """Clinicians (registered by their hospital)."""


@clinician.command("add")
@node_option
@key_option
@click.option("--clinician", "clinician_hex", help="the clinician's public key (hex)")
@click.option("--clinician-key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="display name (a short code, not patient data)")
@timeout_option
@_client_errors
def clinician_add(
    node_url: str,
    key_file: Path,
    clinician_hex: str | None,
    clinician_key: Path | None,
    name: str,
    timeout: float,
) -> None:
    """Register a clinician, signed with the hospital's key (--key)."""
    org = load_key_file(key_file)
    who = _public(clinician_hex, clinician_key, "clinician")
    with _client(node_url, timeout) as c:
        done = c.register_clinician(org, who, name)
    _echo_json({"clinician": who, "tx": done.tx_hash, "height": done.height, "code": done.code})


@click.group("patient")
def patient() -> None:
    """Patients (registered by a hospital; they hold their own key)."""


@patient.command("add")
@node_option
@key_option
@click.option("--patient", "patient_hex", help="the patient's public key (hex)")
@click.option("--patient-key", type=click.Path(dir_okay=False, path_type=Path))
@timeout_option
@_client_errors
def patient_add(
    node_url: str, key_file: Path, patient_hex: str | None, patient_key: Path | None, timeout: float
) -> None:
    """Register a patient, signed with the hospital's key (--key)."""
    org = load_key_file(key_file)
    who = _public(patient_hex, patient_key, "patient")
    with _client(node_url, timeout) as c:
        done = c.register_patient(org, who)
    _echo_json({"patient": who, "tx": done.tx_hash, "height": done.height, "code": done.code})


# --- records ------------------------------------------------------------------------


@click.group("record")
def record() -> None:
    """Encrypted FHIR records: put, get, amend, erase."""


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror}") from None


@record.command("put")
@node_option
@key_option
@click.option("--patient", "patient_hex", required=True, help="the patient's public key (hex)")
@click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--category", default=None, help="consent category (default: from the resource)")
@click.option("--reader", "readers", multiple=True, help="extra reader key (hex); repeatable")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for commit")
@timeout_option
@_client_errors
def record_put(
    node_url: str,
    key_file: Path,
    patient_hex: str,
    file_: Path,
    category: str | None,
    readers: tuple[str, ...],
    wait: bool,
    timeout: float,
) -> None:
    """Validate a FHIR R4 resource, encrypt it for the patient and custodian, submit it."""
    author = load_key_file(key_file)
    extra = [_hex(r, "--reader") for r in readers]
    with _client(node_url, timeout) as c:
        ref = c.put_record(
            author,
            _hex(patient_hex, "--patient"),
            _read_file(file_),
            category=category,
            readers=extra,
            wait=wait,
        )
    out: dict[str, Any] = {"record_id": ref.record_id, "category": ref.category, "tx": ref.tx_hash}
    if ref.tx is not None:
        out.update(height=ref.tx.height, code=ref.tx.code)
    _echo_json(out)


@record.command("get")
@node_option
@key_option
@click.option("--record", "record_hex", required=True)
@click.option("--purpose", default="TREAT", show_default=True, help="purpose of use code")
@click.option("--consent", "consent_hex", default=None, help="use this consent id only")
@click.option("--emergency", is_flag=True, help="break the glass (needs --reason)")
@click.option("--reason", default=None, help="emergency reason code, e.g. ETREAT or BTG")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@timeout_option
@_client_errors
def record_get(
    node_url: str,
    key_file: Path,
    record_hex: str,
    purpose: str,
    consent_hex: str | None,
    emergency: bool,
    reason: str | None,
    out: Path | None,
    timeout: float,
) -> None:
    """Commit the access (audit) entry, fetch the record and print the decrypted FHIR JSON."""
    if emergency != (reason is not None):
        raise click.UsageError("--emergency and --reason go together")
    reader = load_key_file(key_file)
    consent_id = _hex(consent_hex, "--consent", tuple(range(16, 33))) if consent_hex else None
    with _client(node_url, timeout) as c:
        got = c.get_record(
            reader,
            _record_id(record_hex),
            purpose=purpose,
            consent_id=consent_id,
            emergency_reason=reason,
        )
    if out is not None:
        out.write_bytes(got.plaintext)
        _echo_json({"record_id": got.record_id, "out": str(out), "access": got.access.tx_hash})
        return
    try:
        click.echo(json.dumps(json.loads(got.plaintext), indent=2))
    except ValueError:
        raise DecodeError("the decrypted record is not JSON") from None


@record.command("amend")
@node_option
@key_option
@click.option("--record", "record_hex", required=True, help="the record this version supersedes")
@click.option("--patient", "patient_hex", required=True)
@click.option("--file", "file_", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--category", default=None)
@timeout_option
@_client_errors
def record_amend(
    node_url: str,
    key_file: Path,
    record_hex: str,
    patient_hex: str,
    file_: Path,
    category: str | None,
    timeout: float,
) -> None:
    """Write a new version that supersedes --record (both stay auditable)."""
    author = load_key_file(key_file)
    with _client(node_url, timeout) as c:
        ref = c.amend_record(
            author,
            _record_id(record_hex),
            _read_file(file_),
            patient=_hex(patient_hex, "--patient"),
            category=category,
        )
    _echo_json({"record_id": ref.record_id, "supersedes": record_hex, "tx": ref.tx_hash})


@record.command("erase")
@node_option
@key_option
@click.option("--record", "record_hex", required=True)
@timeout_option
@_client_errors
def record_erase(node_url: str, key_file: Path, record_hex: str, timeout: float) -> None:
    """Crypto-shred a record and its earlier versions (signed by the patient, --key)."""
    patient_key = load_key_file(key_file)
    with _client(node_url, timeout) as c:
        done = c.erase_record(patient_key, _record_id(record_hex))
    _echo_json({"erased": record_hex, "tx": done.tx_hash, "height": done.height})


# --- consent ------------------------------------------------------------------------


@click.group("consent")
def consent() -> None:
    """Patient consent: grant, revoke, list (FHIR Consent in and out)."""


def _when(value: str | None, default_ms: int) -> int:
    from node.clinical.fhir import parse_instant

    return default_ms if value is None else parse_instant(value)


@consent.command("grant")
@node_option
@key_option
@click.option("--grantee", default=None, help="clinician or hospital key (hex)")
@click.option("--category", "categories", multiple=True, help="record category; repeatable")
@click.option("--record", "records", multiple=True, help="record id (hex); repeatable")
@click.option("--purpose", default="TREAT", show_default=True)
@click.option("--from", "from_", default=None, help="start (ISO 8601; default now)")
@click.option("--until", default=None, help="end (ISO 8601; default --days after start)")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True)
@click.option("--emergency-allowed", is_flag=True, help="also allow break-glass reads")
@click.option(
    "--fhir",
    "fhir_in",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="take the grant from a FHIR Consent resource instead",
)
@click.option(
    "--export",
    "export",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write the grant as a FHIR Consent resource",
)
@timeout_option
@_client_errors
def consent_grant(
    node_url: str,
    key_file: Path,
    grantee: str | None,
    categories: tuple[str, ...],
    records: tuple[str, ...],
    purpose: str,
    from_: str | None,
    until: str | None,
    days: int,
    emergency_allowed: bool,
    fhir_in: Path | None,
    export: Path | None,
    timeout: float,
) -> None:
    """Grant a clinician or hospital access to record categories or ids (signed by the patient)."""
    from node.clinical.client import grant_terms
    from node.clinical.fhir import consent_from_fhir, consent_to_fhir

    patient_key = load_key_file(key_file)
    if fhir_in is not None:
        terms = consent_from_fhir(_read_file(fhir_in))
    else:
        if grantee is None or not (categories or records):
            raise click.UsageError("give --grantee and at least one --category or --record")
        start = _when(from_, int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        terms = grant_terms(
            _hex(grantee, "--grantee"),
            categories=categories,
            record_ids=[_record_id(r) for r in records],
            purpose=purpose,
            not_before_ms=start,
            not_after_ms=_when(until, start + days * DAY_MS),
            emergency_allowed=emergency_allowed,
        )
    with _client(node_url, timeout) as c:
        cid, done = c.grant_consent(patient_key, terms)
    if export is not None:
        resource = consent_to_fhir(
            terms, patient_key.public_key.hex(), consent_id=cid.hex(), granted_ms=None
        )
        export.write_text(json.dumps(resource, indent=2))
    _echo_json({"consent_id": cid, "tx": done.tx_hash, "height": done.height})


@consent.command("revoke")
@node_option
@key_option
@click.option("--consent", "consent_hex", required=True)
@timeout_option
@_client_errors
def consent_revoke(node_url: str, key_file: Path, consent_hex: str, timeout: float) -> None:
    """Revoke a consent; it stops at the block that commits this."""
    patient_key = load_key_file(key_file)
    with _client(node_url, timeout) as c:
        done = c.revoke_consent(patient_key, _hex(consent_hex, "--consent", tuple(range(16, 33))))
    _echo_json({"revoked": consent_hex, "tx": done.tx_hash, "height": done.height})


@consent.command("list")
@node_option
@key_option
@click.option("--patient", "patient_hex", required=True)
@click.option("--fhir", "as_fhir", is_flag=True, help="print a Bundle of FHIR Consent resources")
@_client_errors
def consent_list(node_url: str, key_file: Path, patient_hex: str, as_fhir: bool) -> None:
    """The patient's consents (signed read by the patient or its hospital)."""
    from node.clinical.fhir import consent_bundle

    reader = load_key_file(key_file)
    with _client(node_url) as c:
        log = c.audit(reader, _hex(patient_hex, "--patient"))
    consents = log["consents"]
    if not as_fhir:
        _echo_json(consents)
        return
    _echo_json(consent_bundle(consents, patient_hex))


# --- audit --------------------------------------------------------------------------


@click.command("audit")
@node_option
@key_option
@click.option("--patient", "patient_hex", required=True)
@click.option("--fhir", "as_fhir", is_flag=True, help="print a Bundle of FHIR AuditEvent resources")
@click.option(
    "--disclosures",
    "as_disclosures",
    is_flag=True,
    help="accounting of disclosures (HIPAA 164.528) instead of the full log",
)
@click.option("--since", default=None, help="start of the period (ISO 8601)")
@click.option("--until", default=None, help="end of the period (ISO 8601, exclusive)")
@_client_errors
def audit(
    node_url: str,
    key_file: Path,
    patient_hex: str,
    as_fhir: bool,
    as_disclosures: bool,
    since: str | None,
    until: str | None,
) -> None:
    """Who touched this patient's data: every access, allowed or refused, emergencies flagged."""
    from node.clinical.client import disclosures
    from node.clinical.fhir import audit_bundle, parse_instant

    reader = load_key_file(key_file)
    with _client(node_url) as c:
        log = c.audit(reader, _hex(patient_hex, "--patient"))
    if as_disclosures:
        rows = disclosures(
            log,
            since_ms=parse_instant(since) if since else 0,
            until_ms=parse_instant(until) if until else None,
        )
        _echo_json({"patient": patient_hex, "since": since, "until": until, "disclosures": rows})
    elif as_fhir:
        _echo_json(audit_bundle(log))
    else:
        _echo_json(log["entries"])


# --- proofs -------------------------------------------------------------------------


@click.command("proof")
@node_option
@click.option("--tx", "tx_hex", required=True, help="tx hash (hex)")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@_client_errors
def proof(node_url: str, tx_hex: str, out: Path | None) -> None:
    """Fetch a committed tx's proof document (GET /v1/txs/{hash}?prove=true)."""
    with _client(node_url) as c:
        doc = c.proof(_hex(tx_hex, "--tx"))
    text = json.dumps(doc, indent=2, sort_keys=True)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text)


@click.command("verify")
@click.option("--proof", "proof_file", required=True, type=click.Path(path_type=Path))
@click.option("--genesis", "genesis_file", required=True, type=click.Path(path_type=Path))
def verify(proof_file: Path, genesis_file: Path) -> None:
    """Offline: check a tx's inclusion proof and its block's commit certificate against genesis."""
    v = verify_files(proof_file, genesis_file)
    _echo_json(
        {
            "valid": True,
            "tx": v.tx_hash,
            "type": v.tx_type,
            "sender": v.sender,
            "height": v.height,
            "index": v.index,
            "block_hash": v.block_hash,
            "block_time_ms": v.block_time_ms,
            "signers": list(v.signers),
            "quorum": v.quorum,
        }
    )


COMMANDS: tuple[click.Command, ...] = (
    clinician,
    patient,
    record,
    consent,
    audit,
    proof,
    verify,
)
