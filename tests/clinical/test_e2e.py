"""Issue 7 acceptance on a 4-process testnet: records, consent, break-glass, audit, erasure.

Hospital A (node0's organisation) registers patient P and clinician D1;
hospital B (node1's) registers D2 and D3. Each identity talks to a different
node, so every step also crosses the network. Waits are conditions with
deadlines; keys are derived from a printed seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from ledger import codec
from ledger.block import Block
from ledger.keys import KeyPair
from ledger.tx import AnchorRecord, KeyRelease, Tx
from node.cli import main
from node.clinical.client import ClinicalClient, disclosures, grant_terms
from node.clinical.errors import ApiError
from node.clinical.fhir import audit_bundle, consent_bundle
from node.clinical.verify import verify_files
from node.keyfile import load_key_file, write_key_file
from node.runner import LocalTestnet, wait_for
from storage.scan import find_in_files, find_marker
from storage.store import open_leveldb

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

MARKER = "PLAINTEXT-MARKER-e2e-5c1d"
DAY_MS = 86_400_000


def observation(bpm: int) -> dict[str, Any]:
    return {
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
        "valueQuantity": {"value": bpm, "unit": "beats/minute"},
        "note": [{"text": f"{MARKER} heart rate"}],
    }


def _key(seed: bytes, label: str) -> KeyPair:
    import hashlib

    return KeyPair.from_seed(hashlib.sha256(seed + label.encode()).digest())


def _release_height(client: ClinicalClient, rid: bytes, reader: bytes, since: int) -> int | None:
    """Height of the committed KeyRelease of ``rid`` to ``reader`` above ``since``, if any."""
    top = int(client.get_json("/v1/status")["height"])
    for h in range(since + 1, top + 1):
        for txh in client.get_json(f"/v1/blocks/{h}")["tx_hashes"]:
            doc = client.proof(bytes.fromhex(txh))
            tx = codec.decode(bytes.fromhex(doc["proof"]["tx"]), Tx)
            if isinstance(tx.body, KeyRelease) and (tx.body.record_id, tx.body.reader) == (
                rid,
                reader,
            ):
                return h
    return None


def cli_json(capsys: pytest.CaptureFixture[str], args: list[str]) -> Any:
    """Run one ``medledger`` command in-process; it must succeed and print JSON."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(args)
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    return json.loads(out)


def _dump_logs(net: LocalTestnet) -> None:
    """On failure: what the nodes said about releases, warnings and errors."""
    for node in net.nodes:
        lines = node.log_path.read_text(errors="replace").splitlines()
        wanted = [ln for ln in lines if any(w in ln for w in ("release", "WARNING", "ERROR"))]
        print(f"--- node{node.index} ({len(lines)} lines) ---")
        print("\n".join(wanted[-30:] + lines[-5:]))


def test_clinical_workflow_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = os.urandom(8)
    print(f"e2e key seed: {seed.hex()}")
    p, d1, d2, d3 = (_key(seed, n) for n in ("P", "D1", "D2", "D3"))
    root = tmp_path / "testnet"
    with LocalTestnet(root, 4) as net:
        net.init()
        net.start_all()
        net.wait_ready(timeout=120)
        org_a, org_b = (load_key_file(n.home / "node_key.json") for n in net.nodes[:2])
        c = [ClinicalClient(n.api_url, commit_timeout=60) for n in net.nodes]
        try:
            # -- registration, signed by the hospitals
            assert c[0].register_patient(org_a, p.public_key).ok
            assert c[0].register_clinician(org_a, d1.public_key, "d1").ok
            assert c[1].register_clinician(org_b, d2.public_key, "d2").ok
            assert c[1].register_clinician(org_b, d3.public_key, "d3").ok

            # -- D1 writes an Observation for P
            ref = c[0].put_record(d1, p.public_key, observation(72))
            assert ref.category == "vital-signs" and ref.tx is not None
            assert MARKER.encode() in ref.plaintext
            assert c[0].get_record(d1, ref.record_id).plaintext == ref.plaintext

            # -- D2 of hospital B is refused, and the refusal is in P's log
            with pytest.raises(ApiError) as refused:
                c[1].get_record(d2, ref.record_id)
            assert (refused.value.status, refused.value.code) == (403, "CONSENT_DENIED")
            log = c[2].audit(p, p.public_key)
            denied = [e for e in log["entries"] if e["reader"] == d2.public_key.hex()]
            assert [e["outcome"] for e in denied] == ["CONSENT_DENIED"]

            # -- P grants D2 the category; the custodian's node releases the key by itself
            now = int(c[3].get_json("/v1/blocks/latest")["header"]["time_ms"])
            terms = grant_terms(
                d2.public_key,
                categories=["vital-signs"],
                not_before_ms=now - DAY_MS,
                not_after_ms=now + DAY_MS,
            )
            cid, granted = c[3].grant_consent(p, terms)
            release_at = wait_for(
                lambda: _release_height(c[0], ref.record_id, d2.public_key, granted.height),
                timeout=60,
                interval=0.3,
                what="the automatic key release",
            )
            assert release_at <= granted.height + 2, (granted.height, release_at)
            got = c[1].get_record(d2, ref.record_id)
            assert got.plaintext == ref.plaintext
            assert got.access.ok

            # -- P revokes: D2 is refused again
            c[3].revoke_consent(p, cid)
            with pytest.raises(ApiError) as again:
                c[1].get_record(d2, ref.record_id)
            assert (again.value.status, again.value.code) == (403, "CONSENT_DENIED")

            # -- D3 breaks the glass; P's log shows it flagged
            reason = json.loads(net.genesis_path.read_text())["break_glass"]["reason_codes"][0]
            emergency = c[2].get_record(d3, ref.record_id, emergency_reason=reason)
            assert emergency.plaintext == ref.plaintext
            log = c[3].audit(p, p.public_key)
            flagged = [e for e in log["entries"] if e["reader"] == d3.public_key.hex()]
            assert len(flagged) == 1 and flagged[0]["emergency"] is True
            assert flagged[0]["emergency_reason"] == reason and flagged[0]["outcome"] == "OK"
            # the audit entry committed before the release that let D3 decrypt
            assert emergency.access.height < (
                _release_height(c[0], ref.record_id, d3.public_key, emergency.access.height) or 0
            )

            # -- FHIR exports validate; the accounting of disclosures lists D1, D2, D3
            bundle = audit_bundle(log)
            get_fhir_model_class("Bundle").model_validate(bundle)
            btg = [e for e in bundle["entry"] if e["resource"].get("meta", {}).get("security")]
            assert len(btg) == 1
            consents = consent_bundle(log["consents"], p.public_key.hex())
            get_fhir_model_class("Bundle").model_validate(consents)
            assert consents["entry"][0]["resource"]["status"] == "inactive"
            who = {r["who"] for r in disclosures(log)}
            assert who == {d1.public_key.hex(), d2.public_key.hex(), d3.public_key.hex()}
            assert c[0].audit(org_a, p.public_key)["entries"] == log["entries"]  # hospital A too
            with pytest.raises(ApiError) as outsider:
                c[1].audit(org_b, p.public_key)
            assert outsider.value.status == 403

            # -- the same through the CLI: register, write, read, list, audit
            keys = tmp_path / "keys"
            keys.mkdir()
            write_key_file(keys / "p.json", p)
            write_key_file(keys / "d1.json", d1)
            p2 = tmp_path / "keys" / "p2.json"
            write_key_file(p2)
            node_a, node_c = net.nodes[0].api_url, net.nodes[2].api_url
            org_a_file = str(net.nodes[0].home / "node_key.json")
            cli_json(
                capsys,
                ["patient", "add", "--node", node_a, "--key", org_a_file, "--patient-key", str(p2)],
            )
            obs_file = tmp_path / "obs.json"
            obs_file.write_text(json.dumps(observation(80)))
            put = cli_json(
                capsys,
                [
                    "record",
                    "put",
                    "--node",
                    node_a,
                    "--key",
                    str(keys / "d1.json"),
                    "--patient",
                    p.public_key.hex(),
                    "--file",
                    str(obs_file),
                ],
            )
            assert put["code"] == "OK" and put["category"] == "vital-signs"
            got_cli = cli_json(
                capsys,
                [
                    "record",
                    "get",
                    "--node",
                    node_c,
                    "--key",
                    str(keys / "p.json"),
                    "--record",
                    put["record_id"],
                ],
            )
            assert got_cli["valueQuantity"]["value"] == 80
            listed = cli_json(
                capsys,
                [
                    "consent",
                    "list",
                    "--node",
                    node_c,
                    "--key",
                    str(keys / "p.json"),
                    "--patient",
                    p.public_key.hex(),
                    "--fhir",
                ],
            )
            get_fhir_model_class("Bundle").model_validate(listed)
            fhir_log = cli_json(
                capsys,
                [
                    "audit",
                    "--node",
                    node_c,
                    "--key",
                    str(keys / "p.json"),
                    "--patient",
                    p.public_key.hex(),
                    "--fhir",
                ],
            )
            get_fhir_model_class("Bundle").model_validate(fhir_log)
            report = cli_json(
                capsys,
                [
                    "audit",
                    "--node",
                    node_c,
                    "--key",
                    str(keys / "p.json"),
                    "--patient",
                    p.public_key.hex(),
                    "--disclosures",
                    "--since",
                    "2000-01-01T00:00:00Z",
                ],
            )
            assert {r["who"] for r in report["disclosures"]} == who

            # -- no plaintext anywhere on disk or in logs while running
            assert find_in_files(root, MARKER.encode()) == []

            # -- D1 amends (both versions auditable), then P erases: crypto-shredding
            amended = c[0].amend_record(d1, ref.record_id, observation(75), patient=p.public_key)
            assert c[2].get_record(p, amended.record_id).plaintext == amended.plaintext
            c[3].erase_record(p, amended.record_id)
            for rid in (ref.record_id, amended.record_id):
                with pytest.raises(ApiError) as gone:
                    c[1].get_record(p, rid)
                assert (gone.value.status, gone.value.code) == (410, "ERASED")

            # -- the proof of the original anchor still verifies offline
            proof = tmp_path / "anchor-proof.json"
            proof.write_text(json.dumps(c[2].proof(ref.tx_hash)))
            verified = verify_files(proof, net.genesis_path)
            assert verified.tx_hash == ref.tx_hash and verified.tx_type == "AnchorRecord"
            capsys.readouterr()  # drop what was printed so far (the seed)
            with pytest.raises(SystemExit) as cli_exit:
                main(["verify", "--proof", str(proof), "--genesis", str(net.genesis_path)])
            assert cli_exit.value.code == 0
            assert json.loads(capsys.readouterr().out)["valid"] is True

            def same_tip() -> int | None:
                sts = [c[i].get_json("/v1/status") for i in range(4)]
                tips = {(int(st["height"]), st["state_root"]) for st in sts}
                return tips.pop()[0] if len(tips) == 1 else None

            final_height = wait_for(same_tip, timeout=60, what="all nodes at one height")
            print(f"final height {final_height}")
        except BaseException:
            _dump_logs(net)
            raise
        finally:
            for client in c:
                client.close()
        codes = net.stop_all(timeout=30)
        assert set(codes.values()) == {0}

    # -- every node: blobs gone, chain verifies, no marker in LevelDB or logs
    erased = {ref.record_id, amended.record_id}
    for node in net.nodes:
        with open_leveldb(node.home / "data" / "ledger", create=False) as store:
            report = store.verify()  # raises on any checksum or chain-link failure
            assert report.last_height == final_height
            blobs: list[bytes] = []
            for _h, raw in store.iter_blocks(1):
                for tx in codec.decode(raw, Block).txs:
                    body = tx.body
                    if isinstance(body, AnchorRecord) and body.record_id in erased:
                        blobs.append(body.blob_hash)
                    if isinstance(body, KeyRelease) and body.record_id in erased:
                        blobs.append(body.wrap_blob_hash)
            assert len(blobs) >= 4  # two anchors, the releases to D2 and D3
            assert [b.hex()[:16] for b in blobs if store.has_blob(b)] == []
            assert find_marker(store.kv, MARKER.encode()) == []
    assert find_in_files(root, MARKER.encode()) == []
