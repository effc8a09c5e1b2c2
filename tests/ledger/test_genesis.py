"""Genesis: validation names the bad field; the height-0 state commits to the genesis."""

from __future__ import annotations

import msgspec
import pytest

from ledger import codec
from ledger.apply import ApplyContext
from ledger.errors import InvalidGenesisError
from ledger.genesis import (
    ConsensusParams,
    Genesis,
    GenesisOrg,
    Policy,
    genesis_apply,
    genesis_hash,
    validate_genesis,
)
from ledger.state import KIND_ORGANISATION, StateView
from ledger.state_tree import EMPTY_ROOT, ROOT_ID
from tests.ledger.test_apply import CHAIN, HOSP_A, HOSP_B, DictState, SortedState, make_genesis


def test_genesis_state_and_hash() -> None:
    genesis = make_genesis()
    result = genesis_apply(genesis)
    assert result.height == 0 and result.results == [] and result.blob_deletes == []
    assert result.state_root != EMPTY_ROOT
    assert result.tree is not None and result.tree.root == result.state_root
    assert [k for k, _ in result.state_writes] == sorted(k for k, _ in result.state_writes)
    store = DictState()
    store.commit(result)
    assert store.get_tree_node(ROOT_ID) == result.state_root
    chain = SortedState()
    chain.commit(genesis_apply(codec.decode(codec.encode(genesis), Genesis)))
    assert chain.get_tree_node(ROOT_ID) == result.state_root  # deterministic
    view = StateView(store)
    for org in (HOSP_A, HOSP_B):
        ident = view.organisation(org.public_key)
        assert ident is not None and ident.kind == KIND_ORGANISATION and ident.nonce == 0
    meta = view.chain_meta()
    assert meta is not None and meta.chain_id == CHAIN
    assert meta.genesis_hash == genesis_hash(genesis)
    # another genesis (even only its policy) is another network and another root
    other = msgspec.structs.replace(genesis, policy=Policy(False, []))
    assert genesis_hash(other) != genesis_hash(genesis)
    assert genesis_apply(other).state_root != result.state_root


def test_context_from_genesis() -> None:
    ctx = ApplyContext.from_genesis(make_genesis(break_glass=False))
    assert ctx.chain_id == CHAIN
    assert not ctx.policy.enabled and ctx.policy.reason_codes == frozenset({"BTG", "ETREAT"})


def test_defaults() -> None:
    assert ConsensusParams().window >= 2
    assert Policy().reason_codes == ["BTG", "ETREAT"]


def _bad(**changes: object) -> Genesis:
    return msgspec.structs.replace(make_genesis(), **changes)


K1, K2 = sorted([HOSP_A.public_key, HOSP_B.public_key])
BAD = [
    ("chain_id", _bad(chain_id="")),
    ("chain_id", _bad(chain_id="a\nb")),
    ("genesis_time_ms", _bad(genesis_time_ms=-1)),
    ("organisations", _bad(organisations=[])),
    ("organisations", _bad(organisations=[GenesisOrg(K2, "b"), GenesisOrg(K1, "a")])),
    ("organisations", _bad(organisations=[GenesisOrg(K1, "a"), GenesisOrg(K1, "b")])),
    ("organisations", _bad(organisations=[GenesisOrg(b"\x01" * 31, "a")], validators=[])),
    ("organisations", _bad(organisations=[GenesisOrg(K1, ""), GenesisOrg(K2, "b")])),
    ("validators", _bad(validators=[])),
    ("validators", _bad(validators=[K2, K1])),
    ("validators", _bad(validators=[b"\x05" * 32])),
    ("params.window", _bad(params=ConsensusParams(window=1))),
    ("params.checkpoint_interval", _bad(params=ConsensusParams(checkpoint_interval=0))),
    ("params.max_block_txs", _bad(params=ConsensusParams(max_block_txs=0))),
    ("params.max_block_bytes", _bad(params=ConsensusParams(max_block_bytes=1000))),
    ("params.max_time_skew_ms", _bad(params=ConsensusParams(max_time_skew_ms=0))),
    ("policy.reason_codes", _bad(policy=Policy(True, ["ETREAT", "BTG"]))),
    ("policy.reason_codes", _bad(policy=Policy(True, [""]))),
]


@pytest.mark.parametrize(("field", "genesis"), BAD, ids=[f for f, _ in BAD])
def test_invalid_genesis_names_the_field(field: str, genesis: Genesis) -> None:
    with pytest.raises(InvalidGenesisError) as info:
        validate_genesis(genesis)
    assert info.value.message.startswith(field + ":")
    with pytest.raises(InvalidGenesisError):
        genesis_apply(genesis)
