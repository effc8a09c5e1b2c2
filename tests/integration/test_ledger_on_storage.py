"""The ledger executed on real storage: determinism, no plaintext at rest, erasure.

These are the acceptance checks of the ledger-core issue that need both
halves: ``apply_block`` feeding ``Store.commit`` in one batch per height,
on LevelDB and on the in-memory twin.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.apply import ApplyContext, apply_block
from ledger.blob import open_record, seal_record
from ledger.block import Block, BlockHeader
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_apply, genesis_hash
from ledger.keys import KeyPair
from ledger.merkle import merkle_root
from ledger.results import OK, decode_results
from ledger.state_tree import StateTree
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    RegisterClinician,
    RegisterPatient,
    RevokeConsent,
    Tx,
    make_tx,
    tx_hash,
)
from storage.scan import find_marker
from storage.store import Store, open_leveldb, open_memory

CHAIN = "it-chain"
HOSP = KeyPair.from_seed(b"H" * 32)
OTHER = KeyPair.from_seed(b"O" * 32)
GENESIS = Genesis(
    CHAIN, 0,
    sorted([GenesisOrg(HOSP.public_key, "hospital-a"), GenesisOrg(OTHER.public_key, "hospital-b")],
           key=lambda o: o.key),
    sorted([HOSP.public_key, OTHER.public_key]),
    ConsensusParams(), Policy(),
)
MARKER = b"PLAINTEXT-MARKER-7f3a9c"


class Chain:
    """Executes blocks on one store exactly as a node does: apply, then one commit."""

    def __init__(self, store: Store) -> None:
        self.store = store
        g = genesis_apply(GENESIS)
        store.commit(g.bundle(block_hash=genesis_hash(GENESIS),
                              block_bytes=codec.encode(GENESIS), certificate=b""))
        self.ctx = ApplyContext.from_genesis(GENESIS)
        self.tree = StateTree.load(store)
        self.height = 0
        self.nonces: dict[bytes, int] = {}

    def tx(self, key: KeyPair, body: Body) -> Tx:
        n = self.nonces.get(key.public_key, 0)
        self.nonces[key.public_key] = n + 1
        return make_tx(key, CHAIN, n, body)

    def commit(self, txs: list[Tx], blobs: Sequence[tuple[bytes, bytes]] = ()) -> list[str]:
        self.height += 1
        hashes = [tx_hash(codec.encode(t)) for t in txs]
        header = BlockHeader(CHAIN, self.height, 1000 * self.height, b"\0" * 32, len(txs),
                             merkle_root(hashes), b"\0" * 32, HOSP.public_key)
        block = Block(header, txs)
        result = apply_block(self.store, block, self.ctx, self.tree)
        assert result.tree is not None
        self.tree = result.tree
        self.store.commit(result.bundle(block_hash=block.hash(), block_bytes=codec.encode(block),
                                        certificate=b"", blob_puts=list(blobs)))
        if result.blob_deletes:
            self.store.compact_blobs()
        return [r.code for r in result.results]


@pytest.fixture(params=["memory", "leveldb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = open_memory() if request.param == "memory" else open_leveldb(tmp_path / "db")
    yield s
    s.close()


# --- determinism --------------------------------------------------------------------------

_patients = [KeyPair.from_seed(bytes([0x50 + i]) * 32) for i in range(4)]
_clinicians = [KeyPair.from_seed(bytes([0x60 + i]) * 32) for i in range(3)]

_op = st.one_of(
    st.tuples(st.just("patient"), st.integers(0, 3)),
    st.tuples(st.just("clinician"), st.integers(0, 2)),
    st.tuples(st.just("grant"), st.integers(0, 3), st.integers(0, 2), st.integers(0, 9)),
    st.tuples(st.just("revoke"), st.integers(0, 3), st.integers(0, 9)),
)


def _script(ops: list[tuple[object, ...]], chain: Chain) -> list[list[Tx]]:
    """Turn ops into blocks of signed txs (some valid, some refused by the rules)."""
    blocks: list[list[Tx]] = [[]]
    for op in ops:
        kind = op[0]
        if kind == "patient":
            tx = chain.tx(HOSP, RegisterPatient(_patients[int(op[1])].public_key))  # type: ignore[call-overload]
        elif kind == "clinician":
            tx = chain.tx(OTHER, RegisterClinician(_clinicians[int(op[1])].public_key, "dr"))  # type: ignore[call-overload]
        elif kind == "grant":
            p, c, cid = _patients[int(op[1])], _clinicians[int(op[2])], int(op[3])  # type: ignore[call-overload]
            tx = chain.tx(p, GrantConsent(bytes([cid]) * 16, c.public_key, ["lab"], [], "TREAT",
                                          0, 10_000, False))
        else:
            p, cid = _patients[int(op[1])], int(op[2])  # type: ignore[call-overload]
            tx = chain.tx(p, RevokeConsent(bytes([cid]) * 16))
        blocks[-1].append(tx)
        if len(blocks[-1]) >= 4:
            blocks.append([])
    return [b for b in blocks if b]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, min_size=1, max_size=24))
def test_same_blocks_same_roots_on_leveldb_and_memory(
    ops: list[tuple[object, ...]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    mem = Chain(open_memory())
    blocks = _script(ops, mem)
    disk_store = open_leveldb(tmp_path_factory.mktemp("det") / "db")
    try:
        disk = Chain(disk_store)
        for txs in blocks:
            codes_mem = mem.commit(txs)
            codes_disk = disk.commit(txs)
            assert codes_mem == codes_disk
            assert mem.store.state_root() == disk.store.state_root()
            assert mem.store.get_block_hash(mem.height) == disk.store.get_block_hash(disk.height)
        # A restart rebuilds the same tree from what LevelDB kept.
        assert StateTree.load(disk.store).root == mem.tree.root
    finally:
        disk_store.close()


# --- records: no plaintext at rest, erasure ------------------------------------------------


def _anchor(chain: Chain, patient: KeyPair, plaintext: bytes, record_id: bytes,
            supersedes: bytes | None = None) -> tuple[Tx, bytes, bytes]:
    readers = sorted([patient.public_key, HOSP.public_key])
    blob, bhash, _key = seal_record(plaintext, record_id, readers)
    body = AnchorRecord(record_id, patient.public_key, "laboratory", HOSP.public_key, bhash,
                        readers, supersedes)
    return chain.tx(HOSP, body), blob, bhash


def _verify_chain(store: Store) -> None:
    """Every stored block still hashes to its index entry and its tx root."""
    last = store.latest_height()
    assert last is not None
    for h in range(1, last + 1):
        raw = store.get_block_bytes(h)
        assert raw is not None
        block = codec.decode(raw, Block)
        assert block.hash() == store.get_block_hash(h)
        hashes = [tx_hash(codec.encode(t)) for t in block.txs]
        assert merkle_root(hashes) == block.header.tx_root
    assert StateTree.load(store).root == store.state_root()


def test_record_is_at_rest_only_as_ciphertext(store: Store, tmp_path: Path) -> None:
    chain = Chain(store)
    patient = KeyPair.from_seed(b"P" * 32)
    assert chain.commit([chain.tx(HOSP, RegisterPatient(patient.public_key))]) == [OK]
    plaintext = b'{"resourceType":"Observation","note":"' + MARKER + b'"}'
    tx, blob, bhash = _anchor(chain, patient, plaintext, b"r" * 16)
    assert chain.commit([tx], [(bhash, blob)]) == [OK]
    stored = store.get_blob(bhash)
    assert stored == blob
    assert open_record(stored, b"r" * 16, patient) == plaintext  # readable by its reader
    leveldb_dir = tmp_path / "db" if (tmp_path / "db").exists() else None
    assert find_marker(store.kv, MARKER, leveldb_dir=leveldb_dir) == []


def test_erasure_leaves_no_copy_and_the_chain_verifies(store: Store, tmp_path: Path) -> None:
    chain = Chain(store)
    patient = KeyPair.from_seed(b"Q" * 32)
    chain.commit([chain.tx(HOSP, RegisterPatient(patient.public_key))])
    v1, blob1, h1 = _anchor(chain, patient, b"v1", b"a" * 16)
    chain.commit([v1], [(h1, blob1)])
    v2, blob2, h2 = _anchor(chain, patient, b"v2", b"b" * 16, supersedes=b"a" * 16)
    chain.commit([v2], [(h2, blob2)])
    assert store.has_blob(h1) and store.has_blob(h2)
    leveldb_dir = tmp_path / "db" if (tmp_path / "db").exists() else None
    assert find_marker(store.kv, blob1[-24:], leveldb_dir=leveldb_dir)  # present before

    assert chain.commit([chain.tx(patient, EraseRecord(b"b" * 16))]) == [OK]
    assert not store.has_blob(h1) and not store.has_blob(h2)  # the amended version too
    for blob in (blob1, blob2):
        assert find_marker(store.kv, blob[-24:], leveldb_dir=leveldb_dir) == []
    _verify_chain(store)
    # The anchor of the erased record is still in its block, provably.
    loc = store.tx_location(tx_hash(codec.encode(v1)))
    assert loc is not None
    raw_results = store.get_results(loc[0])
    assert raw_results is not None and decode_results(raw_results)[loc[1]].code == OK
