"""``python -m ledger.bench``: the ledger's per-tx costs, for blocks of 500 txs.

Prints three rates, each measured on its own so they can be compared with the
signature-verification ceiling: decode + verify (what admission costs a node
per tx), apply (the state machine, signatures already cached, as in a node
where every tx was verified at admission), and commit (one LevelDB write batch
per block, synced, and the in-memory twin). The target of the ledger-core
issue is apply + commit <= 25 µs per tx beyond the signature check.

Figures only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

from ledger import codec
from ledger.apply import ApplyContext, apply_block
from ledger.block import Block, BlockHeader
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_apply, genesis_hash
from ledger.keys import KeyPair
from ledger.merkle import merkle_root
from ledger.state_tree import StateTree
from ledger.tx import RegisterPatient, Tx, make_tx, tx_hash
from ledger.validate import SigCache, check_tx_bytes
from storage.store import Store, open_leveldb, open_memory

CHAIN = "bench"


def _genesis(orgs: list[KeyPair]) -> Genesis:
    return Genesis(
        CHAIN,
        0,
        sorted(
            (GenesisOrg(k.public_key, f"h{i}") for i, k in enumerate(orgs)), key=lambda o: o.key
        ),
        sorted(k.public_key for k in orgs),
        ConsensusParams(),
        Policy(),
    )


def _blocks(orgs: list[KeyPair], n_blocks: int, per_block: int) -> list[Block]:
    nonces = dict.fromkeys((k.public_key for k in orgs), 0)
    blocks = []
    seq = 0
    for h in range(1, n_blocks + 1):
        txs: list[Tx] = []
        for i in range(per_block):
            org = orgs[i % len(orgs)]
            patient = KeyPair.from_seed(b"bench-patient-" + seq.to_bytes(18, "big"))
            seq += 1
            txs.append(
                make_tx(org, CHAIN, nonces[org.public_key], RegisterPatient(patient.public_key))
            )
            nonces[org.public_key] += 1
        hashes = [tx_hash(codec.encode(t)) for t in txs]
        header = BlockHeader(
            CHAIN,
            h,
            h * 1000,
            b"\0" * 32,
            len(txs),
            merkle_root(hashes),
            b"\0" * 32,
            orgs[0].public_key,
        )
        blocks.append(Block(header, txs))
    return blocks


def _per_tx_us(seconds: list[float], per_block: int) -> float:
    return statistics.median(seconds) / per_block * 1e6


def _run_chain(
    store: Store, genesis: Genesis, blocks: list[Block], cache: SigCache, clock: Callable[[], float]
) -> tuple[list[float], list[float]]:
    g = genesis_apply(genesis)
    store.commit(
        g.bundle(
            block_hash=genesis_hash(genesis), block_bytes=codec.encode(genesis), certificate=b""
        )
    )
    ctx = ApplyContext.from_genesis(genesis, cache)
    tree = StateTree.load(store)
    apply_s, commit_s = [], []
    for block in blocks:
        hashes = [tx_hash(codec.encode(t)) for t in block.txs]
        t0 = clock()
        result = apply_block(store, block, ctx, tree, tx_hashes=hashes)
        t1 = clock()
        store.commit(
            result.bundle(block_hash=block.hash(), block_bytes=codec.encode(block), certificate=b"")
        )
        t2 = clock()
        assert result.tree is not None
        tree = result.tree
        apply_s.append(t1 - t0)
        commit_s.append(t2 - t1)
    return apply_s, commit_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ledger.bench", description=__doc__)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--txs", type=int, default=500, help="txs per block")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)

    orgs = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(4)]
    genesis = _genesis(orgs)
    blocks = _blocks(orgs, args.blocks, args.txs)
    raw = [codec.encode(t) for b in blocks for t in b.txs]

    t0 = time.perf_counter()
    for data in raw:
        check_tx_bytes(data, CHAIN)  # decode, canonical check, shape, signature
    verify_s = time.perf_counter() - t0

    cache = SigCache(capacity=len(raw) + 1)
    for data in raw:
        cache.add(tx_hash(data))

    results: dict[str, object] = {
        "txs_per_block": args.txs,
        "blocks": args.blocks,
        "decode_verify_tx_per_s": round(len(raw) / verify_s),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for backend in ("memory", "leveldb"):
        with tempfile.TemporaryDirectory() as tmp:
            store = open_memory() if backend == "memory" else open_leveldb(f"{tmp}/db", sync=True)
            try:
                apply_s, commit_s = _run_chain(store, genesis, blocks, cache, time.perf_counter)
            finally:
                store.close()
        apply_us = _per_tx_us(apply_s, args.txs)
        commit_us = _per_tx_us(commit_s, args.txs)
        results[backend] = {
            "apply_us_per_tx": round(apply_us, 1),
            "commit_us_per_tx": round(commit_us, 1),
            "apply_tx_per_s": round(1e6 / apply_us),
            "commit_tx_per_s": round(1e6 / commit_us),
            "apply_plus_commit_us_per_tx": round(apply_us + commit_us, 1),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"blocks of {args.txs} txs, {args.blocks} blocks, "
        f"load average {results['load_average_1m']} on {results['cpu_count']} cores"
    )
    print(f"  decode + verify     {results['decode_verify_tx_per_s']:>9,} tx/s")
    for backend in ("memory", "leveldb"):
        r = results[backend]
        assert isinstance(r, dict)
        apply_rate, apply_us = r["apply_tx_per_s"], r["apply_us_per_tx"]
        commit_rate, commit_us = r["commit_tx_per_s"], r["commit_us_per_tx"]
        both = r["apply_plus_commit_us_per_tx"]
        print(f"  {backend:<8} apply  {apply_rate:>9,} tx/s  ({apply_us} us/tx)")
        print(f"  {backend:<8} commit {commit_rate:>9,} tx/s  ({commit_us} us/tx)")
        print(f"  {backend:<8} apply + commit {both} us/tx (target <= 25)")

if __name__ == "__main__":
    main()
