"""The genesis document and the height-0 state it defines.

A network is its genesis: chain id, start time, the founding organisations
(the only way an organisation is ever registered), the validators (each a
founding organisation), the consensus parameters every node must share, and
the access policy (break-glass). :func:`genesis_hash` names the network;
:func:`genesis_apply` builds the height-0 state, whose root commits to that
hash. Loading a genesis from JSON (hex keys) is the node's job (``node/``).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from ledger import codec
from ledger.codec import Record
from ledger.consent import BreakGlassPolicy
from ledger.errors import InvalidGenesisError
from ledger.hashing import H_GENESIS, tagged_hash
from ledger.keys import PUBLIC_KEY_SIZE
from ledger.results import ApplyResult, encode_results
from ledger.state import (
    KIND_ORGANISATION,
    META_CHAIN,
    ChainMeta,
    Identity,
    StateView,
    identity_key,
)
from ledger.state_tree import StateTree, dirty_bucket_hashes
from ledger.validate import DEFAULT_LIMITS


class GenesisOrg(Record, frozen=True):
    key: bytes
    name: str


class ConsensusParams(Record, frozen=True):
    """Parameters every validator must share; changing one is a new network.

    ``window`` is the PBFT pipeline depth and fixes the state-root lag of
    :class:`ledger.block.BlockHeader`; ``max_time_skew_ms`` bounds how far a
    proposer's block time may be from a validator's clock.
    """

    window: int = 2
    checkpoint_interval: int = 100
    max_block_txs: int = 2000
    max_block_bytes: int = 4 * 1024 * 1024
    max_time_skew_ms: int = 5_000


class Policy(Record, frozen=True):
    break_glass_enabled: bool = True
    reason_codes: list[str] = msgspec.field(default_factory=lambda: ["BTG", "ETREAT"])

    def break_glass(self) -> BreakGlassPolicy:
        return BreakGlassPolicy(self.break_glass_enabled, frozenset(self.reason_codes))


class Genesis(Record, frozen=True):
    chain_id: str
    genesis_time_ms: int
    organisations: list[GenesisOrg]  # sorted by key
    validators: list[bytes]  # sorted; each a genesis organisation
    params: ConsensusParams
    policy: Policy


def genesis_hash(genesis: Genesis) -> bytes:
    return tagged_hash(H_GENESIS, codec.encode(genesis))


def validate_genesis(genesis: Genesis) -> None:
    """Raise :class:`InvalidGenesisError` naming the first bad field."""
    limits = DEFAULT_LIMITS

    def bad(field: str, why: str) -> InvalidGenesisError:
        return InvalidGenesisError(f"{field}: {why}")

    if not genesis.chain_id or len(genesis.chain_id) > limits.max_str:
        raise bad("chain_id", f"must be 1..{limits.max_str} characters")
    if not genesis.chain_id.isprintable():
        raise bad("chain_id", "must be printable")
    if genesis.genesis_time_ms < 0:
        raise bad("genesis_time_ms", "must not be negative")
    if not genesis.organisations:
        raise bad("organisations", "at least one is required")
    keys = [o.key for o in genesis.organisations]
    if keys != sorted(set(keys)):
        raise bad("organisations", "must be sorted by key, without duplicates")
    for org in genesis.organisations:
        if len(org.key) != PUBLIC_KEY_SIZE:
            raise bad("organisations", f"key must be {PUBLIC_KEY_SIZE} bytes")
        if not org.name or len(org.name) > limits.max_str or not org.name.isprintable():
            raise bad("organisations", "name must be 1..64 printable characters")
    if not genesis.validators:
        raise bad("validators", "at least one is required")
    if genesis.validators != sorted(set(genesis.validators)):
        raise bad("validators", "must be sorted, without duplicates")
    if not set(genesis.validators) <= set(keys):
        raise bad("validators", "every validator must be a genesis organisation")
    p = genesis.params
    if p.window < 2:
        raise bad("params.window", "must be at least 2")
    if p.checkpoint_interval < 1:
        raise bad("params.checkpoint_interval", "must be positive")
    if p.max_block_txs < 1:
        raise bad("params.max_block_txs", "must be positive")
    if p.max_block_bytes < limits.max_tx_bytes:
        raise bad("params.max_block_bytes", f"must hold one tx of {limits.max_tx_bytes} bytes")
    if p.max_time_skew_ms < 1:
        raise bad("params.max_time_skew_ms", "must be positive")
    codes = genesis.policy.reason_codes
    if codes != sorted(set(codes)):
        raise bad("policy.reason_codes", "must be sorted, without duplicates")
    for code in codes:
        if not code or len(code) > limits.max_str or not code.isprintable():
            raise bad("policy.reason_codes", "codes must be 1..64 printable characters")


class _EmptyState:
    """The state before genesis."""

    def get_state(self, key: bytes) -> bytes | None:
        return None

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(())

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        return None


def genesis_apply(genesis: Genesis) -> ApplyResult:
    """The height-0 state: the founding organisations and the chain's identity."""
    validate_genesis(genesis)
    view = StateView(_EmptyState())
    for org in genesis.organisations:
        view.put(identity_key(org.key), Identity(KIND_ORGANISATION, org.key, org.name))
    view.put(META_CHAIN, ChainMeta(genesis.chain_id, genesis_hash(genesis)))
    tree, tree_writes = StateTree.empty().update(dirty_bucket_hashes(view, None))
    return ApplyResult(
        height=0,
        tx_hashes=[],
        results=[],
        results_bytes=encode_results([]),
        state_writes=view.writes(),
        tree_writes=sorted(tree_writes),
        state_root=tree.root,
        tree=tree,
    )
