"""Issue 7: a committed record's blob is never lost to a node (4 real node processes).

Big records travel, and a lost blob comes back:

1. A record over 1 MiB is too large to gossip (libp2p would drop it): it is
   pushed to every validator on a direct stream instead, so a record submitted
   to a replica still commits and is readable through any node.
2. A node loses the blob from its disk and restarts: its start-up scan finds
   the committed anchor without its blob and fetches it.

In both, ``record get`` through the node that lacked the blob must return the
identical plaintext. Waits are conditions with deadlines.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledger.keys import KeyPair
from ledger.state import StateView
from node.clinical.client import ClinicalClient
from node.keyfile import load_key_file
from node.runner import LocalTestnet, wait_for
from storage.store import open_leveldb

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

BIG_NOTE_BYTES = 1_300_000  # over the 1 MiB a gossip batch may carry


def observation(note: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 64, "unit": "beats/minute"},
        "note": [{"text": note}],
    }


def counter(url: str, name: str, **labels: str) -> float:
    """A counter ``name`` (without ``_total``) of one node; 0 if absent or no answer."""
    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name.endswith("_total") and labels.items() <= sample.labels.items():
                    return float(sample.value)
    return 0.0


def fetched(url: str, result: str = "ok") -> float:
    """``medledger_blob_fetch_total{result=...}`` of one node."""
    return counter(url, "medledger_blob_fetch", result=result)


def _dump_logs(net: LocalTestnet) -> None:
    for node in net.nodes:
        lines = node.log_path.read_text(errors="replace").splitlines()
        wanted = [ln for ln in lines if "blob" in ln or "WARNING" in ln or "ERROR" in ln]
        print(f"--- node{node.index} ({len(lines)} lines) ---")
        print("\n".join(wanted[-30:] + lines[-5:]))


def test_nodes_without_a_committed_blob_fetch_it_from_peers(tmp_path: Path) -> None:
    seed = os.urandom(8)
    print(f"key seed: {seed.hex()}")
    p, d1 = (KeyPair.from_seed(hashlib.sha256(seed + n).digest()) for n in (b"P", b"D1"))
    with LocalTestnet(tmp_path / "testnet", 4) as net:
        net.init()
        net.start_all()
        net.wait_ready(timeout=120)
        keys = [load_key_file(n.home / "node_key.json").public_key for n in net.nodes]
        org = load_key_file(net.nodes[0].home / "node_key.json")
        c = [ClinicalClient(n.api_url, commit_timeout=60) for n in net.nodes]
        try:
            assert c[0].register_patient(org, p.public_key).ok
            assert c[0].register_clinician(org, d1.public_key, "d1").ok

            # -- 1. too large to gossip: submitted to a replica, pushed to every
            # validator on a direct stream (node.txpush), committed, readable anywhere
            primary = keys.index(bytes.fromhex(c[0].get_json("/v1/status")["primary"]))
            entry = next(i for i in range(4) if i != primary)
            note = os.urandom(BIG_NOTE_BYTES // 2).hex()
            ref = c[entry].put_record(d1, p.public_key, observation(note))
            pushed = counter(net.nodes[entry].api_url, "medledger_tx_push", result="accepted")
            assert pushed >= 1  # it went by push, not by gossip
            others = [i for i in range(4) if i != entry]
            target = others[-1]
            read = c[target].get_record(p, ref.record_id, timeout=60)
            assert read.plaintext == ref.plaintext

            # -- 2. the blob is lost from one node's disk; it restarts and fetches it
            assert net.stop(target) == 0
            with open_leveldb(net.nodes[target].home / "data" / "ledger", create=False) as store:
                record = StateView(store).record(ref.record_id)
                assert record is not None
                assert store.has_blob(record.blob_hash)
                store.delete_blobs([record.blob_hash])
                store.compact_blobs()
                assert not store.has_blob(record.blob_hash)
            net.start(target)
            net.wait_ready([target], timeout=60)
            wait_for(
                lambda: fetched(net.nodes[target].api_url) >= 1,
                timeout=60,
                what=f"restarted node{target} to fetch the lost blob",
            )
            log = net.nodes[target].log_path.read_text(errors="replace")
            assert "fetching 1 missing blob(s)" in log
            again = c[target].get_record(p, ref.record_id, timeout=60)
            assert again.plaintext == ref.plaintext
            assert fetched(net.nodes[target].api_url, "invalid") == 0
            served = sum(
                counter(n.api_url, "medledger_blob_requests_served", result="sent")
                for n in net.nodes
            )
            assert served >= 1
            assert note not in log  # the plaintext never reaches a log
        except BaseException:
            _dump_logs(net)
            raise
        finally:
            for client in c:
                client.close()
