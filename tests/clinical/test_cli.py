"""The clinical CLI without a node: usage errors and invalid FHIR are one line, nothing sent."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from node.cli import main
from node.keyfile import write_key_file


def _dead_url() -> str:
    """A loopback URL nobody listens on: any request would fail as 'node unreachable'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 1), out, err


def test_invalid_fhir_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "d1.json"
    write_key_file(key)
    bad = tmp_path / "obs.json"
    bad.write_text(json.dumps({"resourceType": "Observation", "code": {"text": "hr"}}))
    code, out, err = _run(
        [
            "record",
            "put",
            "--node",
            _dead_url(),
            "--key",
            str(key),
            "--patient",
            "ab" * 32,
            "--file",
            str(bad),
        ],
        capsys,
    )
    assert code == 1 and out == ""
    assert (
        err == "medledger: error: INVALID_FHIR: Observation.status: "
        "Value for the field 'status' is required.\n"
    )


def test_wrong_type_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "d1.json"
    write_key_file(key)
    bad = tmp_path / "obs.json"
    bad.write_text(
        json.dumps(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "hr"},
                "valueQuantity": {"value": "seventy"},
            }
        )
    )
    code, _, err = _run(
        [
            "record",
            "put",
            "--node",
            _dead_url(),
            "--key",
            str(key),
            "--patient",
            "ab" * 32,
            "--file",
            str(bad),
        ],
        capsys,
    )
    assert code == 1 and "Observation.valueQuantity.value" in err and "seventy" not in err
    assert err.count("\n") == 1


def test_unreachable_node_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "p.json"
    write_key_file(key)
    code, _, err = _run(
        ["audit", "--node", _dead_url(), "--key", str(key), "--patient", "ab" * 32], capsys
    )
    assert code == 1 and err.startswith("medledger: error: node unreachable")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ["record", "get", "--record", "zz"],
        ["record", "get", "--record", "ab" * 16, "--emergency"],
        ["consent", "grant", "--grantee", "ab" * 32],
        ["patient", "add"],
    ],
)
def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    key = tmp_path / "k.json"
    write_key_file(key)
    code, _, err = _run([*args, "--node", _dead_url(), "--key", str(key)], capsys)
    assert code == 2 and err.startswith("medledger: error: ")
    assert err.count("\n") == 1
