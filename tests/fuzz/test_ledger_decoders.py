"""Fuzz the ledger's decoders: tx bytes, blobs, a blob against its tx, and blocks.

Contract: bytes from outside end in a value or a :class:`~ledger.errors.LedgerError`
subclass, never any other exception. Seeds are valid encodings of every tx
type and both blob kinds, so the mutations land behind the msgpack parser.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.app import Verdict
from ledger import codec
from ledger.apply import ApplyContext
from ledger.blob import (
    RecordBlob,
    WrapBlob,
    blob_hash,
    check_blob_for_tx,
    decode_blob,
    make_wrap_blob,
    seal_record,
)
from ledger.consent import BreakGlassPolicy
from ledger.errors import LedgerError
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_hash
from ledger.keys import KeyPair
from ledger.tx import (
    AnchorRecord,
    Body,
    EraseRecord,
    GrantConsent,
    KeyRelease,
    RecordAccess,
    RegisterClinician,
    RegisterOrganization,
    RegisterPatient,
    RevokeConsent,
    Tx,
    ValidatorSetChange,
    make_tx,
)
from ledger.validate import SigCache, check_tx_bytes
from node.ledger_app import LedgerApplication, open_chain
from node.mempool import LedgerTxChecker, Mempool
from storage.store import open_memory
from tests.fuzz.harness import any_input, run_case, structs

CHAIN = "fuzz-chain"


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(b"fuzz:" + name.encode()).digest())


ORG, PATIENT, CLINICIAN = key("org"), key("patient"), key("clinician")
RID = hashlib.sha256(b"record").digest()[:16]
CID = hashlib.sha256(b"consent").digest()[:16]
RECORD_READERS = sorted([ORG.public_key, PATIENT.public_key])
RECORD_BLOB, RECORD_BLOB_HASH, RECORD_KEY = seal_record(b"encrypted-record", RID, RECORD_READERS)
WRAP_BLOB, WRAP_BLOB_HASH = make_wrap_blob(RID, RECORD_KEY, [CLINICIAN.public_key])

BODIES: list[Body] = [
    RegisterOrganization(key("org2").public_key, "hospital-b"),
    RegisterClinician(CLINICIAN.public_key, "dr-who"),
    RegisterPatient(PATIENT.public_key),
    AnchorRecord(RID, PATIENT.public_key, "lab", ORG.public_key, RECORD_BLOB_HASH, RECORD_READERS),
    GrantConsent(CID, CLINICIAN.public_key, ["lab"], [RID], "care", 0, 10**13, True),
    RevokeConsent(CID),
    RecordAccess(RID, "care", CID, None),
    RecordAccess(RID, "care", None, "BTG"),
    KeyRelease(RID, CLINICIAN.public_key, WRAP_BLOB_HASH),
    EraseRecord(RID),
    ValidatorSetChange([key("v5").public_key], []),
]
TXS = [make_tx(ORG, CHAIN, n, body) for n, body in enumerate(BODIES)]
TX_SEEDS = [t.encode() for t in TXS]
BLOB_SEEDS = [RECORD_BLOB, WRAP_BLOB]


@given(data=any_input(TX_SEEDS))
def test_tx_bytes(data: bytes) -> None:
    run_case("ledger.check_tx_bytes", lambda: check_tx_bytes(data, CHAIN, verified=SigCache()))


@given(tx=structs(Tx), ours=st.booleans())
def test_tx_structures(tx: Tx, ours: bool) -> None:
    """Random field values, encoded canonically: every shape check sees wild input."""
    if ours:  # past the chain-id check into the field checks
        tx = msgspec.structs.replace(tx, chain_id=CHAIN)
    run_case("ledger.check_tx_bytes[struct]", lambda: check_tx_bytes(codec.encode(tx), CHAIN))


@given(body=structs(Body), nonce=st.integers(0, 2**64 - 1))
def test_signed_tx_structures(body: Body, nonce: int) -> None:
    """Correctly signed txs with wild bodies: the shape checks must hold on their own."""
    data = make_tx(ORG, CHAIN, nonce, body).encode()
    run_case("ledger.check_tx_bytes[signed]", lambda: check_tx_bytes(data, CHAIN))


BLOB_INPUTS = st.one_of(
    any_input(BLOB_SEEDS, max_raw=2048), structs(RecordBlob | WrapBlob).map(codec.encode)
)


@given(data=BLOB_INPUTS)
def test_decode_blob(data: bytes) -> None:
    run_case("ledger.decode_blob", lambda: decode_blob(data))


@given(data=BLOB_INPUTS, which=st.integers(0, 1))
def test_blob_for_tx(data: bytes, which: int) -> None:
    """The sender controls both: the tx commits to the hash of whatever blob it brings."""
    if which == 0:
        body: Body = AnchorRecord(
            RID, PATIENT.public_key, "lab", ORG.public_key, blob_hash(data), RECORD_READERS
        )
    else:
        body = KeyRelease(RID, CLINICIAN.public_key, blob_hash(data))
    tx = Tx(CHAIN, ORG.public_key, 0, body, bytes(64))
    run_case("ledger.check_blob_for_tx", lambda: check_blob_for_tx(tx, data))


@given(data=BLOB_INPUTS, seed=st.sampled_from(TXS))
def test_blob_against_any_tx(data: bytes, seed: Tx) -> None:
    """A blob that does not match what the tx commits to (or a tx that takes none)."""
    run_case("ledger.check_blob_for_tx[mismatch]", lambda: check_blob_for_tx(seed, data))


# --- blocks, as a PRE-PREPARE carries them to LedgerApplication.validate ----------------


class BlockTarget:
    """A one-validator ledger application at height 0 and one valid block for height 1."""

    def __init__(self) -> None:
        genesis = Genesis(
            chain_id=CHAIN,
            genesis_time_ms=1_700_000_000_000,
            organisations=[GenesisOrg(ORG.public_key, "hospital-a")],
            validators=[ORG.public_key],
            params=ConsensusParams(),
            policy=Policy(),
        )
        self.store = open_memory()
        open_chain(self.store, genesis)
        ctx = ApplyContext(CHAIN, BreakGlassPolicy(True, frozenset({"BTG"})), sig_cache=SigCache())
        mempool = Mempool(LedgerTxChecker(self.store, ctx, time_ms=genesis.genesis_time_ms))
        for n in range(3):
            patient = hashlib.sha256(b"block-patient-%d" % n).digest()
            mempool.add(make_tx(ORG, CHAIN, n, RegisterPatient(patient)).encode())
        self.app = LedgerApplication(
            store=self.store,
            genesis=genesis,
            key=ORG,
            mempool=mempool,
            ctx=ctx,
            clock_ms=lambda: genesis.genesis_time_ms + 60_000,
        )
        self.parent = genesis_hash(genesis)
        block = self.app.propose(1, self.parent, [])
        assert block is not None
        self.block = block

    def check_fn(self, data: bytes) -> Callable[[], Verdict]:
        return lambda: self.check(data)

    def check(self, data: bytes) -> Verdict:
        verdict = self.app.validate(1, self.parent, data, [])
        self.app.digest_of(data)
        self.app.parent_of(data)
        return verdict


BLOCKS = BlockTarget()  # an in-memory store: built once at import, nothing to close


def test_block_seed_is_valid() -> None:
    verdict = BLOCKS.app.validate(1, BLOCKS.parent, BLOCKS.block, [])
    assert verdict.kind.name == "OK", verdict


@given(block=any_input([BLOCKS.block], max_raw=1024))
def test_block_validate(block: bytes) -> None:
    """validate/digest_of/parent_of never raise: a bad block is a verdict, not a crash."""
    run_case(
        "ledger_app.validate[block]",
        BLOCKS.check_fn(block),
        allowed=(),
        label=lambda verdict: f"verdict {verdict.kind.name}",
    )


def test_errors_are_ledger_errors() -> None:
    """The oracle above is only meaningful if the typed errors share one base."""
    with pytest.raises(LedgerError):
        check_tx_bytes(b"\xc1", CHAIN)
    with pytest.raises(LedgerError):
        decode_blob(b"")
