"""A tiny in-process chain for the clinical unit tests: real apply, real store, no network.

Blocks are applied with :func:`ledger.apply.apply_block` and committed to an
in-memory :class:`storage.store.Store`, with a real commit certificate signed
by a quorum of the genesis validators, so reads, key release and proofs see
exactly what a node's store would hold.
"""

from __future__ import annotations

import json
from typing import Any

from consensus.messages import Commit, CommitCertificate, VoteSig, sign_bytes
from ledger import codec
from ledger.apply import ApplyContext, apply_block
from ledger.block import Block, BlockHeader
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy
from ledger.keys import KeyPair
from ledger.merkle import merkle_root, prove
from ledger.results import ApplyResult, decode_results
from ledger.tx import Body, Tx, make_tx, tx_hash
from node.api.render import json_bytes
from node.ledger_app import open_chain
from storage.store import Store, open_memory

CHAIN = "medledger-clinical-test"
T0 = 1_700_000_000_000
DAY = 86_400_000
BLOCK_MS = 1_000


def seeded_key(label: str) -> KeyPair:
    return KeyPair.from_seed(label.encode().ljust(32, b"\0")[:32])


class MiniChain:
    """Four hospital validators, an in-memory store and a block builder."""

    def __init__(self, policy: Policy | None = None) -> None:
        self.orgs = sorted(
            (seeded_key(f"hospital-{i}") for i in range(4)), key=lambda k: k.public_key
        )
        self.genesis = Genesis(
            chain_id=CHAIN,
            genesis_time_ms=T0,
            organisations=[GenesisOrg(k.public_key, f"h{i}") for i, k in enumerate(self.orgs)],
            validators=[k.public_key for k in self.orgs],
            params=ConsensusParams(),
            policy=policy or Policy(),
        )
        self.store: Store = open_memory()
        open_chain(self.store, self.genesis)
        self.ctx = ApplyContext.from_genesis(self.genesis)
        self.nonces: dict[bytes, int] = {}
        self.time_ms = T0

    @property
    def height(self) -> int:
        return self.store.latest_height() or 0

    def tx(self, key: KeyPair, body: Body) -> Tx:
        nonce = self.nonces.get(key.public_key, 0)
        self.nonces[key.public_key] = nonce + 1
        return make_tx(key, CHAIN, nonce, body)

    def commit(self, items: list[tuple[Tx, bytes | None]]) -> ApplyResult:
        """Apply and store one block holding ``items`` (tx, sidecar blob)."""
        self.time_ms += BLOCK_MS
        height = self.height + 1
        txs = [t for t, _ in items]
        hashes = [tx_hash(codec.encode(t)) for t in txs]
        parent = self.store.get_block_hash(height - 1)
        assert parent is not None
        header = BlockHeader(
            chain_id=CHAIN,
            height=height,
            time_ms=self.time_ms,
            parent_hash=parent,
            tx_count=len(txs),
            tx_root=merkle_root(hashes),
            state_root=b"\0" * 32,
            proposer=self.orgs[0].public_key,
        )
        block = Block(header, txs)
        result = apply_block(self.store, block, self.ctx)
        erased = set(result.blob_deletes)
        puts = []
        for t, blob in items:
            if blob is None:
                continue
            bh = getattr(t.body, "blob_hash", None) or getattr(t.body, "wrap_blob_hash", None)
            assert isinstance(bh, bytes)
            if bh not in erased:
                puts.append((bh, blob))
        self.store.commit(
            result.bundle(
                block_hash=block.hash(),
                block_bytes=codec.encode(block),
                certificate=codec.encode(self.certificate(height, block.hash())),
                blob_puts=puts,
            )
        )
        return result

    def run(self, key: KeyPair, body: Body, blob: bytes | None = None) -> tuple[bytes, str]:
        """Commit one tx in its own block; return (tx hash, result code)."""
        t = self.tx(key, body)
        result = self.commit([(t, blob)])
        return result.tx_hashes[0], result.results[0].code

    def certificate(
        self, height: int, digest: bytes, signers: list[KeyPair] | None = None, view: int = 0
    ) -> CommitCertificate:
        keys = signers if signers is not None else self.orgs[:3]
        payload = Commit(view, height, digest)
        commits = [VoteSig(k.public_key, k.sign(sign_bytes(CHAIN, payload))) for k in keys]
        return CommitCertificate(height, view, digest, commits)

    def proof_document(self, txh: bytes) -> dict[str, Any]:
        """What ``GET /v1/txs/{hash}?prove=true`` answers, as parsed JSON."""
        loc = self.store.tx_location(txh)
        assert loc is not None
        height, index = loc
        raw = self.store.get_block_bytes(height)
        cert = self.store.get_certificate(height)
        results = self.store.get_results(height)
        assert raw is not None and cert is not None and results is not None
        block = codec.decode(raw, Block)
        hashes = [tx_hash(codec.encode(t)) for t in block.txs]
        answer = {
            "hash": txh,
            "status": "committed",
            "height": height,
            "index": index,
            "code": decode_results(results)[index].code,
            "proof": {
                "chain_id": CHAIN,
                "height": height,
                "header": block.header,
                "tx": block.txs[index].encode(),
                "inclusion": prove(hashes, index),
                "certificate": cert,
            },
        }
        parsed: dict[str, Any] = json.loads(json_bytes(answer))
        return parsed

    def genesis_json(self) -> dict[str, Any]:
        """A genesis file (node.genesis_file format) for this chain's validators."""
        from node.config import HostPort
        from node.genesis_file import (
            GenesisDoc,
            OrganisationEntry,
            ValidatorEntry,
            new_private_network_key,
            peer_id_of,
        )

        doc = GenesisDoc(
            chain_id=CHAIN,
            genesis_time_ms=T0,
            organisations=tuple(
                OrganisationEntry(f"h{i}", k.public_key) for i, k in enumerate(self.orgs)
            ),
            validators=tuple(
                ValidatorEntry(
                    k.public_key,
                    peer_id_of(k.public_key),
                    HostPort("127.0.0.1", 30000 + i),
                    f"node{i}",
                )
                for i, k in enumerate(self.orgs)
            ),
            private_network_key=new_private_network_key(),
        )
        return doc.to_json()


class World:
    """Hospital A keeps patient P's record (written by its clinician D1); B employs D2 and D3."""

    def __init__(self, chain: MiniChain | None = None) -> None:
        from ledger.tx import RegisterClinician, RegisterPatient

        self.chain = chain or MiniChain()
        self.a, self.b = self.chain.orgs[0], self.chain.orgs[1]
        self.p = seeded_key("patient-p")
        self.d1, self.d2, self.d3 = (seeded_key(f"clinician-{i}") for i in (1, 2, 3))
        c = self.chain
        c.commit(
            [
                (c.tx(self.a, RegisterPatient(self.p.public_key)), None),
                (c.tx(self.a, RegisterClinician(self.d1.public_key, "d1")), None),
                (c.tx(self.b, RegisterClinician(self.d2.public_key, "d2")), None),
                (c.tx(self.b, RegisterClinician(self.d3.public_key, "d3")), None),
            ]
        )

    def anchor(
        self, plaintext: bytes, category: str = "vital-signs", supersedes: bytes | None = None
    ) -> bytes:
        import os

        from ledger.blob import canonical_readers, seal_record
        from ledger.tx import AnchorRecord

        rid = os.urandom(16)
        readers = canonical_readers([self.p.public_key, self.a.public_key])
        blob, bh, _ = seal_record(plaintext, rid, readers)
        body = AnchorRecord(
            rid, self.p.public_key, category, self.a.public_key, bh, readers, supersedes
        )
        _, code = self.chain.run(self.d1, body, blob)
        assert code == "OK"
        return rid

    def grant(
        self,
        grantee: bytes,
        categories: list[str] | None = None,
        emergency_allowed: bool = False,
    ) -> bytes:
        import os

        from ledger.tx import GrantConsent

        cid = os.urandom(16)
        body = GrantConsent(
            cid,
            grantee,
            sorted(categories or ["vital-signs"]),
            [],
            "TREAT",
            T0,
            T0 + 365 * DAY,
            emergency_allowed,
        )
        _, code = self.chain.run(self.p, body)
        assert code == "OK"
        return cid

    def access(
        self, reader: KeyPair, rid: bytes, emergency: str | None = None
    ) -> tuple[bytes, str]:
        from ledger.tx import RecordAccess

        return self.chain.run(reader, RecordAccess(rid, "TREAT", None, emergency))
