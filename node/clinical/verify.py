"""Offline verification of a tx inclusion proof: ``medledger verify --proof FILE --genesis FILE``.

The proof document is what ``GET /v1/txs/{hash}?prove=true`` returns (the
whole answer, or just its ``proof`` object): the block header, the tx bytes,
the RFC 6962 inclusion proof of the tx hash, and the block's commit
certificate. Checked here with no network, trusting only the genesis file:

1. the chain id of the proof, the header and the tx is the genesis chain id;
2. the tx bytes decode canonically and hash to the proof's leaf (and to the
   answer's ``hash`` when present);
3. the inclusion proof's tree size is the header's certified ``tx_count``,
   and the path leads from the leaf to the header's ``tx_root``;
4. the certificate is for this height and this header's hash, and a quorum
   of distinct genesis validators signed its COMMIT
   (:meth:`consensus.validators.ValidatorSet.check_certificate`).

Any failure is a :class:`~node.clinical.errors.ProofError` naming the check.
An erased record does not break this: blocks hold only hashes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from consensus.messages import CommitCertificate
from consensus.validators import ValidatorSet
from ledger import codec
from ledger.block import BlockHeader
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.merkle import InclusionProof
from ledger.tx import Tx, tx_hash
from node.clinical.errors import ProofError
from node.genesis_file import load_genesis


@dataclass(frozen=True, slots=True)
class VerifiedTx:
    """What a valid proof establishes."""

    tx_hash: bytes
    tx_type: str
    sender: bytes
    height: int
    index: int
    block_hash: bytes
    block_time_ms: int
    signers: tuple[bytes, ...]
    quorum: int


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or len(value) % 2:
        raise ProofError(f"{what}: expected lowercase hex")
    try:
        out = bytes.fromhex(value)
    except ValueError:
        raise ProofError(f"{what}: expected lowercase hex") from None
    if out.hex() != value:
        raise ProofError(f"{what}: expected lowercase hex")
    return out


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ProofError(f"{what}: expected a non-negative integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProofError(f"{what}: expected a string")
    return value


def _obj(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProofError(f"{what}: expected an object")
    return value


def _header(raw: Any) -> BlockHeader:
    h = _obj(raw, "header")
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(BlockHeader):
        if f.name not in h:
            raise ProofError(f"header.{f.name}: missing")
        what = f"header.{f.name}"
        value = h[f.name]
        if f.type is bytes:
            out[f.name] = _hex(value, what)
        elif f.type is int:
            out[f.name] = _int(value, what)
        else:
            out[f.name] = _str(value, what)
    return BlockHeader(**out)


def _inclusion(raw: Any) -> InclusionProof:
    p = _obj(raw, "inclusion")
    path = p.get("path")
    if not isinstance(path, list):
        raise ProofError("inclusion.path: expected a list")
    return InclusionProof(
        leaf=_hex(p.get("leaf"), "inclusion.leaf"),
        index=_int(p.get("index"), "inclusion.index"),
        tree_size=_int(p.get("tree_size"), "inclusion.tree_size"),
        path=[_hex(x, "inclusion.path") for x in path],
    )


def verify_proof(document: Mapping[str, Any], genesis: Genesis) -> VerifiedTx:
    """Check a proof document against ``genesis``; see the module docstring."""
    doc = _obj(document, "proof document")
    expected_hash: bytes | None = None
    if "proof" in doc:
        if doc.get("status") != "committed":
            raise ProofError("the tx was not committed when the proof was taken")
        if "hash" in doc:
            expected_hash = _hex(doc["hash"], "hash")
        doc = _obj(doc["proof"], "proof")
    chain_id = _str(doc.get("chain_id"), "chain_id")
    if chain_id != genesis.chain_id:
        raise ProofError(f"chain_id: proof is for {chain_id!r}, genesis is {genesis.chain_id!r}")
    height = _int(doc.get("height"), "height")
    header = _header(doc.get("header"))
    if header.chain_id != genesis.chain_id or header.height != height:
        raise ProofError("header: chain id or height does not match the proof")
    tx_bytes = _hex(doc.get("tx"), "tx")
    try:
        tx = codec.decode(tx_bytes, Tx)
    except LedgerError as exc:
        raise ProofError(f"tx: does not decode canonically ({exc.code})") from None
    txh = tx_hash(tx_bytes)
    if tx.chain_id != genesis.chain_id:
        raise ProofError("tx: signed for another chain")
    if expected_hash is not None and txh != expected_hash:
        raise ProofError("tx: bytes do not hash to the requested tx hash")
    inclusion = _inclusion(doc.get("inclusion"))
    if inclusion.leaf != txh:
        raise ProofError("inclusion.leaf: is not the hash of the tx")
    if inclusion.tree_size != header.tx_count:
        raise ProofError("inclusion.tree_size: differs from the header's certified tx_count")
    if not inclusion.verify(header.tx_root):
        raise ProofError("inclusion: path does not lead to the header's tx_root")
    try:
        cert = codec.decode(_hex(doc.get("certificate"), "certificate"), CommitCertificate)
    except LedgerError as exc:
        raise ProofError(f"certificate: does not decode ({exc.code})") from None
    block_hash = header.hash()
    if cert.height != height or cert.digest != block_hash:
        raise ProofError("certificate: is for another height or block")
    validators = ValidatorSet(genesis.chain_id, genesis.validators)
    try:
        validators.check_certificate(cert)
    except LedgerError as exc:
        raise ProofError(f"certificate: {exc.message}") from None
    return VerifiedTx(
        tx_hash=txh,
        tx_type=tx.type_name,
        sender=tx.sender,
        height=height,
        index=inclusion.index,
        block_hash=block_hash,
        block_time_ms=header.time_ms,
        signers=tuple(c.validator for c in cert.commits),
        quorum=validators.quorum,
    )


def verify_files(proof_path: str | Path, genesis_path: str | Path) -> VerifiedTx:
    """``medledger verify``: load both files (no network) and :func:`verify_proof`."""
    genesis = load_genesis(genesis_path).to_ledger_genesis()
    p = Path(proof_path)
    try:
        document = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise ProofError(f"{p}: proof file not found") from None
    except OSError as exc:
        raise ProofError(f"{p}: cannot read proof file: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ProofError(f"{p}: not valid JSON") from None
    return verify_proof(document, genesis)
