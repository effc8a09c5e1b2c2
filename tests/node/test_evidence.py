"""Equivocation evidence is stored, survives a restart and is listed by ``GET /v1/evidence``.

The evidence comes from the real PBFT core (a replica fed two conflicting
signed votes), goes through the node's recorder and log into a LevelDB store,
and is read back after the store is closed and opened again. Waits are
conditions with deadlines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from consensus.core import Evidence
from consensus.messages import (
    Checkpoint,
    CheckpointProof,
    Envelope,
    Prepare,
    SignedViewChange,
    ViewChange,
    sign,
)
from consensus.testing import CHAIN_ID
from ledger import codec
from node.api import ApiSettings, create_app
from node.evidence import (
    EvidenceLog,
    EvidenceRecorder,
    EvidenceSettings,
    StoredEvidence,
    describe,
    page_body,
)
from node.metrics import NodeMetrics
from storage import schema
from storage.store import Store, open_leveldb
from tests._wait import wait_until
from tests.consensus.helpers import GENESIS, KEYS, VS, make_replica, signed
from tests.node.test_api import FakeFacade


def equivocation(sender: int, height: int) -> Evidence:
    """The core's own evidence: replica 1 receives two different PREPAREs of ``sender``."""
    r, _ = make_replica(1)
    r.receive(signed(sender, Prepare(0, height, bytes([1]) * 32, GENESIS)))
    effects = r.receive(signed(sender, Prepare(0, height, bytes([2]) * 32, GENESIS)))
    [ev] = [e for e in effects if isinstance(e, Evidence)]
    return ev


def checkpoint_equivocation(sender: int) -> Evidence:
    r, _ = make_replica(1)
    r.receive(signed(sender, Checkpoint(8, bytes([1]) * 32, bytes([2]) * 32)))
    effects = r.receive(signed(sender, Checkpoint(8, bytes([1]) * 32, bytes([3]) * 32)))
    [ev] = [e for e in effects if isinstance(e, Evidence)]
    return ev


class EvidenceFacade(FakeFacade):
    """The API's facade with the node's real evidence listing."""

    def __init__(self, log: EvidenceLog) -> None:
        super().__init__(NodeMetrics())
        self.log = log

    async def evidence(self, limit: int, before: int | None) -> object:
        return page_body(await trio.to_thread.run_sync(self.log.page, limit, before))


async def get_json(app: Any, path: str) -> tuple[int, Any]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        r = await http.get(path)
        return r.status_code, r.json()


async def test_evidence_from_the_core_survives_a_restart_and_is_listed_newest_first(
    tmp_path: Path,
) -> None:
    prepare_ev = equivocation(sender=2, height=1)
    checkpoint_ev = checkpoint_equivocation(sender=3)
    store = open_leveldb(tmp_path / "db")
    recorder = EvidenceRecorder(EvidenceLog(store), clock_ms=lambda: 1234, height=lambda: 7)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        recorder.record_nowait(prepare_ev)
        recorder.record_nowait(checkpoint_ev)
        recorder.record_nowait(equivocation(sender=2, height=1))  # the same slot again
        await wait_until(
            lambda: recorder.statistics().stored + recorder.statistics().duplicates == 3,
            "three effects written or deduplicated",
        )
        nursery.cancel_scope.cancel()
    st = recorder.statistics()
    assert (st.received, st.stored, st.duplicates, st.dropped, st.retained) == (3, 2, 1, 0, 2)
    store.close()

    store = open_leveldb(tmp_path / "db")  # the restart
    try:
        assert store.verify().per_namespace[-1] == ("evidence", 2)
        log = EvidenceLog(store)
        assert len(log) == 2 and log.last_seq == 2
        assert log.append([describe(prepare_ev, detected_height=9, detected_at_ms=1)]) == 0
        app = create_app(EvidenceFacade(log), ApiSettings())
        status, body = await get_json(app, "/v1/evidence")
        assert status == 200
        assert body["retained"] == 2 and body["next_before"] is None
        newest, oldest = body["evidence"]
        assert newest["seq"] == 2 and newest["kind"] == "Checkpoint"
        assert (newest["view"], newest["height"]) == (None, 8)
        assert oldest == {
            "seq": 1,
            "validator": KEYS[2].public_key.hex(),
            "kind": "Prepare",
            "view": 0,
            "height": 1,
            "detected_height": 7,
            "detected_at_ms": 1234,
            "first": prepare_ev.first.hex(),
            "second": prepare_ev.second.hex(),
        }
        # Anyone with the validator keys can check both signed messages.
        for raw in (oldest["first"], oldest["second"]):
            VS.check_envelope(codec.decode(bytes.fromhex(raw), Envelope))

        status, page = await get_json(app, "/v1/evidence?limit=1")
        assert [e["seq"] for e in page["evidence"]] == [2] and page["next_before"] == 2
        status, page = await get_json(app, "/v1/evidence?limit=1&before=2")
        assert [e["seq"] for e in page["evidence"]] == [1] and page["next_before"] is None
        for bad in ("limit=0", "limit=101", "before=0", "limit=x"):
            status, err = await get_json(app, f"/v1/evidence?{bad}")
            assert status == 400 and err["error"]["code"] == "MALFORMED", bad
    finally:
        store.close()


def test_a_view_change_equivocation_names_its_view() -> None:
    proof = CheckpointProof(0, GENESIS, bytes(32), [])

    def svc(new_view: int, stable: CheckpointProof) -> bytes:
        env = sign(KEYS[0], CHAIN_ID, ViewChange(new_view, stable, None, []))
        assert isinstance(env.payload, ViewChange)
        return codec.encode(SignedViewChange(env.sender, env.payload, env.signature))

    other = CheckpointProof(0, GENESIS, bytes([1]) * 32, [])
    ev = Evidence(KEYS[0].public_key, "ViewChange", svc(3, proof), svc(3, other))
    stored = describe(ev, detected_height=5, detected_at_ms=6)
    assert (stored.kind, stored.view, stored.height) == ("ViewChange", 3, None)
    garbled = describe(
        Evidence(KEYS[0].public_key, "pp", b"\xc1", b"\xc1"), detected_height=0, detected_at_ms=0
    )
    assert (garbled.kind, garbled.view, garbled.height) == ("PrePrepare", None, None)


def item(i: int, size: int = 100) -> StoredEvidence:
    return StoredEvidence(KEYS[0].public_key, "Commit", 0, i, b"a" * size, b"b" * size, i, i)


def held_seqs(store: Store) -> list[int]:
    return [seq for seq, _ in store.iter_evidence(0)]


def test_the_log_keeps_the_newest_within_its_bounds(tmp_path: Path) -> None:
    store = open_leveldb(tmp_path / "db")
    try:
        log = EvidenceLog(store, EvidenceSettings(max_entries=3, max_page_bytes=450))
        assert log.append([item(i) for i in range(5)]) == 5
        assert held_seqs(store) == [3, 4, 5] and len(log) == 3 and log.pruned == 2
        page = log.page(10)
        assert [e.seq for e in page.entries] == [5, 4] and page.next_before == 4  # 450 bytes
        assert [e.seq for e in log.page(10, before=4).entries] == [3]
        assert log.page(10, before=3).entries == []
        assert log.append([item(1)]) == 1  # slot 1 was pruned: new evidence again
        assert held_seqs(store) == [4, 5, 6]

        by_bytes = EvidenceLog(store, EvidenceSettings(max_bytes=1))
        assert len(by_bytes) == 3  # opening never prunes; the next append does
        by_bytes.append([item(10, size=5000)])
        assert held_seqs(store) == [7]  # the newest entry stays even over the byte bound
    finally:
        store.close()


def test_a_full_queue_drops_and_counts() -> None:
    log = EvidenceLog(_MemoryEvidence(), EvidenceSettings(queue_size=2))
    recorder = EvidenceRecorder(log, clock_ms=lambda: 0, height=lambda: 0)
    ev = equivocation(sender=2, height=1)
    for _ in range(3):
        recorder.record_nowait(ev)
    st = recorder.statistics()
    assert (st.received, st.dropped) == (3, 1)


class _MemoryEvidence:
    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}

    def write_evidence(self, puts: Any, deletes: Any) -> None:
        for seq in deletes:
            self.data.pop(seq, None)
        self.data.update(puts)

    def iter_evidence(self, start: int, stop: int | None = None) -> Any:
        return iter(
            sorted(
                (k, v) for k, v in self.data.items() if k >= start and (stop is None or k < stop)
            )
        )


def test_evidence_keys_are_their_own_namespace() -> None:
    key = schema.evidence_key(1)
    assert schema.namespace_of(key) is schema.Namespace.EVIDENCE
    assert len(key) == 1 + schema.HEIGHT_SIZE
    with pytest.raises(ValueError):
        schema.evidence_key(-1)
