"""State tree: proofs verify and fail on any tampered byte; both update paths agree."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.errors import CorruptionError, DecodeError
from ledger.state import (
    AUDIT_CHUNK_BITS,
    StateView,
    audit_chunk,
    audit_key,
    bucket_of,
    grant_group,
    grant_key,
    identity_key,
)
from ledger.state_tree import (
    BUCKETS,
    DEPTH,
    EMPTY_ROOT,
    ROOT_ID,
    StateProof,
    StateTree,
    dirty_bucket_hashes,
    node_id,
    prove,
    update_from_reader,
    verify_state_proof,
)
from tests.ledger.test_apply import PAT, Chain, DictState, SortedState, populated, scenario


def test_empty_tree_constants() -> None:
    tree = StateTree.empty()
    assert tree.root == EMPTY_ROOT
    assert StateTree.load(DictState()).root == EMPTY_ROOT
    assert BUCKETS == 65_536 and DEPTH == 4
    assert len({node_id(lvl, i) for lvl in range(DEPTH + 1) for i in (0, 1, 255)}) == 15


def test_grouped_keys_share_a_bucket() -> None:
    p, g = b"\x01" * 32, b"\x02" * 32
    assert bucket_of(grant_key(p, g, b"\x03" * 16)) == bucket_of(grant_key(p, g, b"\x04" * 20))
    assert bucket_of(grant_key(p, g, b"\x03" * 16)) == bucket_of(grant_group(p, g))
    chunk = 1 << AUDIT_CHUNK_BITS
    assert bucket_of(audit_key(p, 0)) == bucket_of(audit_key(p, chunk - 1))
    assert bucket_of(audit_key(p, chunk)) == bucket_of(audit_chunk(p, 1))
    assert bucket_of(identity_key(p)) != bucket_of(identity_key(g))


def proved_chain() -> Chain:
    chain = Chain.new(SortedState())
    scenario(chain)
    return chain


def test_proofs_of_every_key_and_of_absent_keys() -> None:
    chain = proved_chain()
    store = chain.store
    assert isinstance(store, SortedState)
    root = store.get_tree_node(ROOT_ID)
    assert root is not None and chain.tree is not None and root == chain.tree.root
    for stored in store.keys:
        proof, proof_root = prove(store, stored[2:])
        assert proof_root == root
        assert proof.value is not None and proof.value == store.values[stored][32:]
        assert verify_state_proof(root, proof)
        # the same proof claiming another value, or absence, fails
        assert not verify_state_proof(root, StateProof(proof.key, proof.value + b"x",
                                                       proof.leaves, proof.siblings))
        assert not verify_state_proof(root, StateProof(proof.key, None, proof.leaves,
                                                       proof.siblings))
    for missing in (identity_key(b"\x77" * 32), b"Rnope-nope-nope-nope"):
        proof, _ = prove(store, missing)
        assert proof.value is None
        assert verify_state_proof(root, proof)
    # a proof against an older root fails
    older = chain.results[0].state_root
    proof, _ = prove(store, identity_key(PAT.public_key))
    assert not verify_state_proof(older, proof)


@settings(max_examples=150)
@given(st.data())
def test_any_tampered_byte_fails(data: st.DataObject) -> None:
    chain = _CHAIN
    store = chain.store
    assert isinstance(store, SortedState)
    stored = data.draw(st.sampled_from(store.keys))
    proof, root = prove(store, stored[2:])
    raw = bytearray(codec.encode(proof))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    try:
        tampered = codec.decode(bytes(raw), StateProof)
    except DecodeError:
        return  # not even a proof
    assert not verify_state_proof(root, tampered)
    flipped = bytearray(root)
    flipped[data.draw(st.integers(0, 31))] ^= 1
    assert not verify_state_proof(bytes(flipped), proof)


_CHAIN = proved_chain()


def test_reader_path_equals_tree_path() -> None:
    chain = populated(Chain.new(DictState()))
    pat = chain.view().identity(PAT.public_key)
    assert pat is not None and chain.tree is not None
    view = StateView(chain.store)
    for i in range(40):
        view.put(identity_key(bytes([i]) * 32), pat)
    view.delete(identity_key(PAT.public_key))
    buckets_fast = dirty_bucket_hashes(view, chain.tree)
    buckets_slow = dirty_bucket_hashes(view, None)
    assert buckets_fast == buckets_slow
    new_tree, writes = chain.tree.update(buckets_fast)
    writes2, root2 = update_from_reader(chain.store, buckets_slow)
    assert sorted(writes) == sorted(writes2)
    assert new_tree.root == root2 != chain.tree.root
    # writing a key and deleting it again in one block leaves its bucket as it was
    view = StateView(chain.store)
    view.put(identity_key(b"\x99" * 32), pat)
    view.delete(identity_key(b"\x99" * 32))
    same, _ = chain.tree.update(dirty_bucket_hashes(view, chain.tree))
    assert same.root == chain.tree.root


def test_load_detects_a_wrong_root() -> None:
    chain = populated(Chain.new(DictState()))
    store = chain.store
    assert isinstance(store, DictState)
    assert StateTree.load(store).root == store.tree[ROOT_ID]
    store.tree[ROOT_ID] = hashlib.sha256(b"lie").digest()
    try:
        StateTree.load(store)
    except CorruptionError:
        pass
    else:
        raise AssertionError("a tree that does not match its root must not load")
