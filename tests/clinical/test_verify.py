"""Offline proof verification: a real certificate verifies; every tampering is caught."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from consensus.messages import CommitCertificate
from ledger import codec
from ledger.genesis import Genesis
from ledger.tx import RegisterPatient
from node.cli import main
from node.clinical.errors import ProofError
from node.clinical.verify import verify_files, verify_proof
from tests.clinical.helpers import CHAIN, MiniChain, seeded_key


@pytest.fixture
def chain() -> MiniChain:
    return MiniChain()


def _three_tx_proof(chain: MiniChain) -> tuple[dict[str, Any], bytes]:
    org = chain.orgs[1]
    txs = [chain.tx(org, RegisterPatient(seeded_key(f"p{i}").public_key)) for i in range(3)]
    result = chain.commit([(t, None) for t in txs])
    target = result.tx_hashes[2]
    return chain.proof_document(target), target


def test_valid_proof_verifies(chain: MiniChain) -> None:
    doc, txh = _three_tx_proof(chain)
    v = verify_proof(doc, chain.genesis)
    assert v.tx_hash == txh
    assert (v.height, v.index, v.tx_type) == (1, 2, "RegisterPatient")
    assert len(v.signers) == 3 and v.quorum == 3
    assert verify_proof(doc["proof"], chain.genesis).tx_hash == txh  # bare proof object too


def _mutated(doc: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target: Any = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "check"),
    [
        (["proof", "inclusion", "index"], 1, "inclusion"),
        (["proof", "inclusion", "tree_size"], 2, "tree_size"),
        (["proof", "header", "tx_root"], "00" * 32, "tx_root"),
        (["proof", "header", "time_ms"], 1, "certificate"),
        (["proof", "chain_id"], "other", "chain_id"),
        (["proof", "height"], 2, "header"),
        (["hash"], "11" * 32, "tx"),
        (["status"], "pending", "committed"),
        (["proof", "header", "proposer"], "XY", "header.proposer"),
    ],
)
def test_tampering_is_refused(
    chain: MiniChain, path: list[str | int], value: Any, check: str
) -> None:
    doc, _ = _three_tx_proof(chain)
    with pytest.raises(ProofError, match=check):
        verify_proof(_mutated(doc, path, value), chain.genesis)


def test_tampered_tx_bytes_are_refused(chain: MiniChain) -> None:
    doc, _ = _three_tx_proof(chain)
    other = chain.tx(chain.orgs[1], RegisterPatient(seeded_key("someone").public_key))
    bad = _mutated(doc, ["proof", "tx"], other.encode().hex())
    del bad["hash"]
    with pytest.raises(ProofError, match="leaf"):
        verify_proof(bad, chain.genesis)


def test_certificate_below_quorum_is_refused(chain: MiniChain) -> None:
    doc, _ = _three_tx_proof(chain)
    cert = codec.decode(bytes.fromhex(doc["proof"]["certificate"]), CommitCertificate)
    weak = chain.certificate(cert.height, cert.digest, signers=chain.orgs[:2])
    bad = _mutated(doc, ["proof", "certificate"], codec.encode(weak).hex())
    with pytest.raises(ProofError, match="quorum"):
        verify_proof(bad, chain.genesis)


def test_certificate_of_other_validators_is_refused(chain: MiniChain) -> None:
    doc, _ = _three_tx_proof(chain)
    strangers = [seeded_key(f"stranger-{i}") for i in range(4)]
    other = Genesis(
        chain_id=CHAIN,
        genesis_time_ms=chain.genesis.genesis_time_ms,
        organisations=chain.genesis.organisations,
        validators=sorted(k.public_key for k in strangers),
        params=chain.genesis.params,
        policy=chain.genesis.policy,
    )
    with pytest.raises(ProofError, match="certificate"):
        verify_proof(doc, other)


def test_cli_verify_offline(
    chain: MiniChain, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc, txh = _three_tx_proof(chain)
    proof = tmp_path / "proof.json"
    genesis = tmp_path / "genesis.json"
    proof.write_text(json.dumps(doc))
    genesis.write_text(json.dumps(chain.genesis_json()))
    assert verify_files(proof, genesis).tx_hash == txh
    with pytest.raises(SystemExit) as ok:
        main(["verify", "--proof", str(proof), "--genesis", str(genesis)])
    assert ok.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True and out["tx"] == txh.hex()
    proof.write_text(json.dumps(_mutated(doc, ["proof", "inclusion", "index"], 0)))
    with pytest.raises(SystemExit) as bad:
        main(["verify", "--proof", str(proof), "--genesis", str(genesis)])
    assert bad.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("medledger: error: PROOF_INVALID") and err[-1] == "\n"
    assert err.count("\n") == 1
