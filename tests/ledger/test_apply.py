"""apply_block: every rule, failures recorded without aborting, determinism, cost.

Two independent in-memory ``StateReader`` implementations live here (a dict
scanned by sorting, and a sorted list searched by bisection); the other
state-machine tests import them. Helper B adds the LevelDB cross-check.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ledger import codec
from ledger.apply import ApplyContext, apply_block, check_tx_against_state
from ledger.block import Block, BlockHeader
from ledger.errors import (
    AlreadyExistsError,
    AlreadyRevokedError,
    ConsentDeniedError,
    ErasedError,
    NonceGapError,
    NonceReplayError,
    NotFoundError,
    UnauthorizedError,
    UnknownSenderError,
)
from ledger.genesis import ConsensusParams, Genesis, GenesisOrg, Policy, genesis_apply
from ledger.keys import KeyPair
from ledger.results import ApplyResult, decode_results
from ledger.state import KIND_CLINICIAN, KIND_PATIENT, StateView
from ledger.state_tree import ROOT_ID, StateTree
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
from ledger.validate import Limits, SigCache

CHAIN = "medledger-test"
T0 = 1_700_000_000_000
DAY = 86_400_000


# --- two independent in-memory stores ----------------------------------------------


class DictState:
    """StateReader over plain dicts; scans sort on every call."""

    def __init__(self) -> None:
        self.state: dict[bytes, bytes] = {}
        self.tree: dict[bytes, bytes] = {}

    def get_state(self, key: bytes) -> bytes | None:
        return self.state.get(key)

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.state.items() if k.startswith(prefix)))

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        return self.tree.get(node_id)

    def commit(self, result: ApplyResult) -> None:
        for k, v in result.state_writes:
            if v is None:
                self.state.pop(k, None)
            else:
                self.state[k] = v
        self.tree.update(result.tree_writes)


class SortedState:
    """StateReader over a sorted key list and bisection."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.values: dict[bytes, bytes] = {}
        self.nodes: list[tuple[bytes, bytes]] = []

    def get_state(self, key: bytes) -> bytes | None:
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.values[key]
        return None

    def scan_state(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        i = bisect.bisect_left(self.keys, prefix)
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            yield self.keys[i], self.values[self.keys[i]]
            i += 1

    def get_tree_node(self, node_id: bytes) -> bytes | None:
        i = bisect.bisect_left(self.nodes, (node_id, b""))
        if i < len(self.nodes) and self.nodes[i][0] == node_id:
            return self.nodes[i][1]
        return None

    def commit(self, result: ApplyResult) -> None:
        for k, v in result.state_writes:
            i = bisect.bisect_left(self.keys, k)
            present = i < len(self.keys) and self.keys[i] == k
            if v is None:
                if present:
                    del self.keys[i]
                    del self.values[k]
            else:
                if not present:
                    self.keys.insert(i, k)
                self.values[k] = v
        for node, h in result.tree_writes:
            i = bisect.bisect_left(self.nodes, (node, b""))
            if i < len(self.nodes) and self.nodes[i][0] == node:
                self.nodes[i] = (node, h)
            else:
                self.nodes.insert(i, (node, h))


def key(name: str) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(name.encode()).digest())


def rid(name: str) -> bytes:
    return hashlib.sha256(b"id:" + name.encode()).digest()[:16]


def bh(name: str) -> bytes:
    return hashlib.sha256(b"blob:" + name.encode()).digest()


HOSP_A, HOSP_B = key("hospital-a"), key("hospital-b")


def make_genesis(*, break_glass: bool = True) -> Genesis:
    orgs = sorted([GenesisOrg(HOSP_A.public_key, "Hospital A"),
                   GenesisOrg(HOSP_B.public_key, "Hospital B")], key=lambda o: o.key)
    return Genesis(
        chain_id=CHAIN,
        genesis_time_ms=T0,
        organisations=orgs,
        validators=sorted(o.key for o in orgs),
        params=ConsensusParams(),
        policy=Policy(break_glass_enabled=break_glass, reason_codes=["BTG", "ETREAT"]),
    )


@dataclass
class Chain:
    """A genesis state, a store, and signing helpers that track nonces."""

    store: DictState | SortedState
    ctx: ApplyContext
    tree: StateTree | None
    height: int = 0
    nonces: dict[bytes, int] = field(default_factory=dict)
    results: list[ApplyResult] = field(default_factory=list)

    @classmethod
    def new(cls, store: DictState | SortedState | None = None, *, use_tree: bool = True,
            break_glass: bool = True, sig_cache: SigCache | None = None) -> Chain:
        genesis = make_genesis(break_glass=break_glass)
        g = genesis_apply(genesis)
        store = store if store is not None else DictState()
        store.commit(g)
        ctx = ApplyContext.from_genesis(genesis, sig_cache=sig_cache)
        return cls(store, ctx, g.tree if use_tree else None)

    def tx(self, signer: KeyPair, body: Body, nonce: int | None = None) -> Tx:
        n = self.nonces.get(signer.public_key, 0) if nonce is None else nonce
        self.nonces[signer.public_key] = n + 1
        return make_tx(signer, CHAIN, n, body)

    def block(self, txs: Sequence[Tx], time_ms: int | None = None) -> Block:
        header = BlockHeader(CHAIN, self.height + 1, T0 + self.height * 1000
                             if time_ms is None else time_ms, b"\0" * 32, len(txs),
                             b"\0" * 32, b"\0" * 32, HOSP_A.public_key)
        return Block(header, list(txs))

    def run(self, txs: Sequence[Tx], time_ms: int | None = None) -> list[str]:
        block = self.block(txs, time_ms)
        result = apply_block(self.store, block, self.ctx, self.tree)
        self.store.commit(result)
        if self.tree is not None:
            assert result.tree is not None
            self.tree = result.tree
        self.height += 1
        self.results.append(result)
        assert decode_results(result.results_bytes) == result.results
        return [r.code for r in result.results]

    def view(self) -> StateView:
        return StateView(self.store)

    def root(self) -> bytes | None:
        return self.store.get_tree_node(ROOT_ID)


DOC, NURSE, DOC_B = key("doc"), key("nurse"), key("doc-b")
PAT, PAT2 = key("patient"), key("patient-2")


def populated(chain: Chain) -> Chain:
    """Clinicians of A and B, two patients of A, one record of PAT at A."""
    codes = chain.run([
        chain.tx(HOSP_A, RegisterClinician(DOC.public_key, "Dr A")),
        chain.tx(HOSP_A, RegisterClinician(NURSE.public_key, "Nurse A")),
        chain.tx(HOSP_B, RegisterClinician(DOC_B.public_key, "Dr B")),
        chain.tx(HOSP_A, RegisterPatient(PAT.public_key)),
        chain.tx(HOSP_A, RegisterPatient(PAT2.public_key)),
    ])
    assert codes == ["OK"] * 5
    codes = chain.run([chain.tx(DOC, anchor("r1", PAT, "lab"))])
    assert codes == ["OK"]
    return chain


def anchor(name: str, patient: KeyPair, category: str, supersedes: str | None = None,
           custodian: KeyPair = HOSP_A) -> AnchorRecord:
    readers = sorted([patient.public_key, custodian.public_key])
    return AnchorRecord(rid(name), patient.public_key, category, custodian.public_key,
                        bh(name), readers, None if supersedes is None else rid(supersedes))


def grant(name: str, grantee: KeyPair, *, categories: Sequence[str] = ("lab",),
          record_ids: Sequence[bytes] = (), purpose: str = "TREAT",
          not_before: int = T0 - DAY, not_after: int = T0 + 365 * DAY,
          emergency: bool = False) -> GrantConsent:
    return GrantConsent(rid(name), grantee.public_key, sorted(categories), sorted(record_ids),
                        purpose, not_before, not_after, emergency)


# --- rules ---------------------------------------------------------------------------


def test_registration_rules() -> None:
    chain = Chain.new()
    other = key("other")
    codes = chain.run([
        chain.tx(HOSP_A, RegisterClinician(DOC.public_key, "Dr A")),
        chain.tx(HOSP_A, RegisterClinician(DOC.public_key, "Dr A again")),  # duplicate
        chain.tx(DOC, RegisterClinician(NURSE.public_key, "Nurse")),  # clinician can't
        chain.tx(DOC, RegisterPatient(PAT.public_key)),  # clinician can't
        chain.tx(HOSP_A, RegisterOrganization(other.public_key, "Rogue")),  # genesis only
        chain.tx(HOSP_B, RegisterPatient(PAT.public_key)),
        chain.tx(PAT, RegisterClinician(other.public_key, "x")),
    ])
    assert codes == ["OK", "ALREADY_EXISTS", "UNAUTHORIZED", "UNAUTHORIZED", "UNAUTHORIZED",
                     "OK", "UNAUTHORIZED"]
    view = chain.view()
    doc = view.identity(DOC.public_key)
    assert doc is not None and doc.kind == KIND_CLINICIAN and doc.org == HOSP_A.public_key
    pat = view.patient(PAT.public_key)
    assert pat is not None and pat.kind == KIND_PATIENT and pat.org == HOSP_B.public_key
    assert view.identity(NURSE.public_key) is None
    assert view.identity(other.public_key) is None
    # failed rule txs still consumed their nonces
    a = view.organisation(HOSP_A.public_key)
    assert a is not None and a.nonce == 3
    assert doc.nonce == 2


def test_nonce_and_sender_failures_change_nothing() -> None:
    chain = Chain.new()
    stranger = key("stranger")
    assert isinstance(chain.store, DictState)
    before = dict(chain.store.state)
    block_txs = [
        make_tx(stranger, CHAIN, 0, RegisterPatient(PAT.public_key)),  # unknown sender
        make_tx(HOSP_A, CHAIN, 1, RegisterPatient(PAT.public_key)),  # gap
        make_tx(HOSP_A, "other-chain", 0, RegisterPatient(PAT.public_key)),  # wrong chain
    ]
    bad_sig = make_tx(HOSP_A, CHAIN, 0, RegisterPatient(PAT.public_key))
    bad_sig = Tx(bad_sig.chain_id, bad_sig.sender, bad_sig.nonce, bad_sig.body,
                 bytes([bad_sig.signature[0] ^ 1]) + bad_sig.signature[1:])
    block_txs.append(bad_sig)
    block_txs.append(make_tx(HOSP_A, CHAIN, 0, ValidatorSetChange([], [])))  # consumes nonce 0
    block_txs.append(make_tx(HOSP_A, CHAIN, 0, RegisterPatient(PAT.public_key)))  # replay
    block = chain.block(block_txs)
    result = apply_block(chain.store, block, chain.ctx, chain.tree)
    assert [r.code for r in result.results] == [
        "UNKNOWN_SENDER", "NONCE_GAP", "WRONG_CHAIN", "BAD_SIGNATURE", "NOT_SUPPORTED",
        "NONCE_REPLAYED",
    ]
    # only HOSP_A's nonce moved (the NOT_SUPPORTED tx), nothing else
    touched = [k for k, _ in result.state_writes]
    assert len(touched) == 1
    view = chain.view()
    assert view.identity(PAT.public_key) is None
    assert isinstance(chain.store, DictState) and chain.store.state == before  # untouched


def test_empty_block_keeps_root() -> None:
    chain = Chain.new()
    root = chain.root()
    result = apply_block(chain.store, chain.block([]), chain.ctx, chain.tree)
    assert result.state_root == root and result.state_writes == [] and result.tree_writes == []


def test_anchor_rules() -> None:
    chain = populated(Chain.new())
    bad_readers = AnchorRecord(rid("r9"), PAT.public_key, "lab", HOSP_A.public_key, bh("r9"),
                               sorted([PAT.public_key, HOSP_A.public_key, key("ghost").public_key]))
    codes = chain.run([
        chain.tx(DOC, anchor("r1", PAT, "lab")),  # exists
        chain.tx(DOC_B, anchor("r2", PAT, "lab")),  # clinician of B for custodian A
        chain.tx(HOSP_B, anchor("r3", PAT, "lab")),  # org B for custodian A
        chain.tx(HOSP_A, anchor("r4", key("ghost"), "lab")),  # unregistered patient
        chain.tx(DOC, anchor("r5", PAT, "lab", supersedes="nope")),  # missing supersedes
        chain.tx(DOC, anchor("r6", PAT2, "lab", supersedes="r1")),  # other patient's record
        chain.tx(DOC, bad_readers),  # unregistered reader
        chain.tx(HOSP_A, anchor("r7", PAT, "imaging", supersedes="r1")),  # OK amendment
        chain.tx(HOSP_B, anchor("r8", PAT, "lab", custodian=HOSP_B)),  # B may be custodian
        chain.tx(PAT, anchor("r10", PAT, "lab")),  # patient is no custodian
    ])
    assert codes == ["ALREADY_EXISTS", "UNAUTHORIZED", "UNAUTHORIZED", "NOT_FOUND",
                     "NOT_FOUND", "UNAUTHORIZED", "NOT_FOUND", "OK", "OK", "UNAUTHORIZED"]
    view = chain.view()
    r7 = view.record(rid("r7"))
    assert r7 is not None and r7.supersedes == rid("r1") and r7.anchored_at == chain.height
    assert [w.reader for w in r7.readers] == sorted([PAT.public_key, HOSP_A.public_key])
    for name in ("r2", "r3", "r4", "r5", "r6", "r9", "r10"):
        assert view.record(rid(name)) is None


def test_consent_grant_access_revoke_in_block_order() -> None:
    chain = populated(Chain.new())
    codes = chain.run([
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),  # no consent yet
        chain.tx(PAT, grant("c1", DOC_B)),
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),  # allowed by c1
        chain.tx(DOC_B, RecordAccess(rid("r1"), "RESEARCH")),  # wrong purpose
        chain.tx(PAT, RevokeConsent(rid("c1"))),
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),  # revoked in this block
        chain.tx(DOC, RecordAccess(rid("r1"), "TREAT")),  # custodian's clinician
        chain.tx(PAT, RecordAccess(rid("r1"), "OWN")),  # the patient
        chain.tx(HOSP_B, RecordAccess(rid("nope"), "TREAT")),  # no such record
    ])
    assert codes == ["CONSENT_DENIED", "OK", "OK", "CONSENT_DENIED", "OK", "CONSENT_DENIED",
                     "OK", "OK", "NOT_FOUND"]
    view = chain.view()
    log = list(view.audit_log(PAT.public_key))
    assert [e.outcome for e in log] == ["CONSENT_DENIED", "OK", "CONSENT_DENIED",
                                        "CONSENT_DENIED", "OK", "OK"]
    assert [e.seq for e in log] == list(range(6))
    assert log[1].consent_id == rid("c1") and log[1].reason == "CONSENT"
    assert log[1].reader == DOC_B.public_key and log[1].index == 2
    assert chain.results[-1].audit_entries == log
    entry = view.consent(rid("c1"))
    assert entry is not None and entry.revoked_at == chain.height
    codes = chain.run([
        chain.tx(PAT, RevokeConsent(rid("c1"))),  # twice
        chain.tx(PAT2, RevokeConsent(rid("c1"))),  # not theirs
        chain.tx(PAT, RevokeConsent(rid("none"))),
        chain.tx(PAT, grant("c1", DOC_B)),  # id reuse
        chain.tx(PAT, grant("c2", PAT2)),  # patients are not grantees
        chain.tx(PAT, grant("c3", key("ghost"))),
        chain.tx(DOC, grant("c4", DOC_B)),  # only patients grant
    ])
    assert codes == ["ALREADY_REVOKED", "UNAUTHORIZED", "NOT_FOUND", "ALREADY_EXISTS",
                     "RULE_VIOLATION", "NOT_FOUND", "UNAUTHORIZED"]


def test_consent_to_organisation_window_and_named_consent() -> None:
    chain = populated(Chain.new())
    codes = chain.run([
        chain.tx(PAT, grant("c-org", HOSP_B, not_before=T0 + 10 * DAY, not_after=T0 + 20 * DAY)),
        chain.tx(PAT, grant("c-id", DOC_B, categories=(), record_ids=[rid("r1")],
                            purpose="AUDIT")),
    ])
    assert codes == ["OK", "OK"]
    # before the window: denied; inside: the clinician of B is covered via its org
    assert chain.run([chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT"))]) == ["CONSENT_DENIED"]
    t_in = T0 + 15 * DAY
    assert chain.run([chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT"))], t_in) == ["OK"]
    assert chain.run([chain.tx(HOSP_B, RecordAccess(rid("r1"), "TREAT"))], t_in) == ["OK"]
    assert chain.run([chain.tx(DOC_B, RecordAccess(rid("r1"), "AUDIT", rid("c-id")))]) == ["OK"]
    # naming a consent that does not cover the purpose denies even if another would allow
    named = RecordAccess(rid("r1"), "TREAT", rid("c-id"))
    assert chain.run([chain.tx(DOC_B, named)], t_in) == ["CONSENT_DENIED"]
    # end of window is exclusive
    assert chain.run([chain.tx(HOSP_B, RecordAccess(rid("r1"), "TREAT"))],
                     T0 + 20 * DAY) == ["CONSENT_DENIED"]


def test_break_glass() -> None:
    chain = populated(Chain.new())
    codes = chain.run([
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT", emergency_reason="ETREAT")),
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT", emergency_reason="WHIM")),
        chain.tx(HOSP_B, RecordAccess(rid("r1"), "TREAT", emergency_reason="ETREAT")),
    ])
    assert codes == ["OK", "CONSENT_DENIED", "CONSENT_DENIED"]
    log = list(chain.view().audit_log(PAT.public_key))
    assert log[0].emergency and log[0].reason == "BREAK_GLASS"
    assert log[0].emergency_reason == "ETREAT"
    assert not log[1].emergency and not log[2].emergency
    # the custodian may now release a key to the break-glass reader
    release = KeyRelease(rid("r1"), DOC_B.public_key, bh("wrap-docb"))
    assert chain.run([chain.tx(HOSP_A, release)]) == ["OK"]

    off = populated(Chain.new(break_glass=False))
    codes = off.run([
        off.tx(DOC_B, RecordAccess(rid("r1"), "TREAT", emergency_reason="ETREAT")),
        off.tx(PAT, grant("c-em", DOC_B, purpose="OTHER", emergency=True)),
        off.tx(DOC_B, RecordAccess(rid("r1"), "TREAT", emergency_reason="ETREAT")),
    ])
    assert codes == ["CONSENT_DENIED", "OK", "OK"]
    log = list(off.view().audit_log(PAT.public_key))
    assert log[-1].reason == "EMERGENCY_CONSENT" and log[-1].consent_id == rid("c-em")


def test_key_release_rules() -> None:
    chain = populated(Chain.new())
    rel = KeyRelease(rid("r1"), DOC_B.public_key, bh("wrap1"))
    codes = chain.run([
        chain.tx(HOSP_A, rel),  # no consent
        chain.tx(PAT, grant("c1", DOC_B, purpose="RESEARCH")),
        chain.tx(DOC, rel),  # clinician, not the custodian org
        chain.tx(HOSP_B, rel),  # not custodian
        chain.tx(HOSP_A, rel),  # any purpose suffices
        chain.tx(HOSP_A, rel),  # already holds a wrap
        chain.tx(HOSP_A, KeyRelease(rid("r1"), PAT.public_key, bh("w2"))),  # patient has one
        chain.tx(HOSP_A, KeyRelease(rid("zz"), DOC_B.public_key, bh("w3"))),
        chain.tx(HOSP_A, KeyRelease(rid("r1"), key("ghost").public_key, bh("w4"))),
    ])
    assert codes == ["CONSENT_DENIED", "OK", "UNAUTHORIZED", "UNAUTHORIZED", "OK",
                     "ALREADY_EXISTS", "ALREADY_EXISTS", "NOT_FOUND", "NOT_FOUND"]
    record = chain.view().record(rid("r1"))
    assert record is not None
    readers = [(w.reader, w.wrap_blob_hash) for w in record.readers]
    assert readers == sorted(readers)
    assert (DOC_B.public_key, bh("wrap1")) in readers


def test_erasure_shreds_every_version_and_wrap() -> None:
    chain = populated(Chain.new())
    codes = chain.run([
        chain.tx(DOC, anchor("r1v2", PAT, "lab", supersedes="r1")),
        chain.tx(DOC, anchor("r1v3", PAT, "lab", supersedes="r1v2")),
        chain.tx(DOC, anchor("other", PAT, "lab")),
        chain.tx(PAT, grant("c1", DOC_B)),
        chain.tx(HOSP_A, KeyRelease(rid("r1"), DOC_B.public_key, bh("wrap-r1"))),
        chain.tx(HOSP_A, KeyRelease(rid("r1v3"), DOC_B.public_key, bh("wrap-r1v3"))),
    ])
    assert codes == ["OK"] * 6
    codes = chain.run([
        chain.tx(PAT2, EraseRecord(rid("r1v3"))),  # not their record
        chain.tx(HOSP_A, EraseRecord(rid("r1v3"))),  # custodian cannot erase
        chain.tx(PAT, EraseRecord(rid("r1v3"))),
        chain.tx(PAT, EraseRecord(rid("r1v2"))),  # already erased with r1v3
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),  # erased: refused, audited
        chain.tx(HOSP_A, KeyRelease(rid("r1v2"), DOC_B.public_key, bh("w"))),
        chain.tx(DOC, anchor("r1v4", PAT, "lab", supersedes="r1v3")),
        chain.tx(PAT, EraseRecord(rid("missing"))),
    ])
    assert codes == ["UNAUTHORIZED", "UNAUTHORIZED", "OK", "ERASED", "ERASED", "ERASED",
                     "ERASED", "NOT_FOUND"]
    result = chain.results[-1]
    assert sorted(result.blob_deletes) == sorted(
        [bh("r1"), bh("r1v2"), bh("r1v3"), bh("wrap-r1"), bh("wrap-r1v3")]
    )
    view = chain.view()
    for name in ("r1", "r1v2", "r1v3"):
        rec = view.record(rid(name))
        assert rec is not None and rec.erased_at == chain.height
    other = view.record(rid("other"))
    assert other is not None and other.erased_at is None
    log = list(view.audit_log(PAT.public_key))
    assert log[-1].outcome == "ERASED" and log[-1].reason == "ERASED"


def test_check_tx_against_state() -> None:
    chain = populated(Chain.new())
    t = T0
    ctx = chain.ctx

    def nxt(k: KeyPair) -> int:
        return chain.nonces[k.public_key]

    # ok, and nothing written
    tx = make_tx(PAT, CHAIN, 0, grant("c1", DOC_B))
    check_tx_against_state(chain.store, tx, t, ctx)
    assert chain.view().consent(rid("c1")) is None
    with pytest.raises(UnknownSenderError):
        check_tx_against_state(chain.store, make_tx(key("x"), CHAIN, 0, grant("c", DOC)), t, ctx)
    with pytest.raises(NonceReplayError):
        check_tx_against_state(chain.store, make_tx(HOSP_A, CHAIN, 0, EraseRecord(rid("r1"))),
                               t, ctx)
    with pytest.raises(NonceGapError):
        check_tx_against_state(chain.store, make_tx(PAT, CHAIN, 5, grant("c1", DOC_B)), t, ctx)
    # a mempool holding PAT's nonce 0 admits nonce 1
    check_tx_against_state(chain.store, make_tx(PAT, CHAIN, 1, grant("c1", DOC_B)), t, ctx,
                           expected_nonce=1)
    with pytest.raises(UnauthorizedError):
        check_tx_against_state(chain.store, make_tx(DOC, CHAIN, nxt(DOC), RegisterPatient(
            key("p9").public_key)), t, ctx)
    with pytest.raises(AlreadyExistsError):
        check_tx_against_state(chain.store, make_tx(DOC, CHAIN, nxt(DOC), anchor("r1", PAT, "lab")),
                               t, ctx)
    with pytest.raises(NotFoundError):
        check_tx_against_state(chain.store, make_tx(PAT, CHAIN, 0, RevokeConsent(rid("c9"))),
                               t, ctx)
    with pytest.raises(ConsentDeniedError):
        check_tx_against_state(chain.store, make_tx(HOSP_A, CHAIN, nxt(HOSP_A), KeyRelease(
            rid("r1"), DOC_B.public_key, bh("w"))), t, ctx)
    # a refused read is admitted: it must be audited on chain
    check_tx_against_state(chain.store, make_tx(DOC_B, CHAIN, 0, RecordAccess(rid("r1"), "T")),
                           t, ctx)
    assert len(list(chain.view().audit_log(PAT.public_key))) == 0
    chain.run([chain.tx(PAT, EraseRecord(rid("r1")))])
    with pytest.raises(ErasedError):
        check_tx_against_state(chain.store, make_tx(PAT, CHAIN, 1, EraseRecord(rid("r1"))),
                               t, ctx)
    chain.run([chain.tx(PAT, grant("c1", DOC_B)), chain.tx(PAT, RevokeConsent(rid("c1")))])
    with pytest.raises(AlreadyRevokedError):
        check_tx_against_state(chain.store, make_tx(PAT, CHAIN, 3, RevokeConsent(rid("c1"))),
                               t, ctx)


# --- determinism --------------------------------------------------------------------


def scenario(chain: Chain) -> None:
    """A mixed workload over several blocks, exercising every tx type."""
    populated(chain)
    chain.run([
        chain.tx(PAT, grant("c1", DOC_B)),
        chain.tx(PAT, grant("c2", HOSP_B, categories=("imaging", "lab"), emergency=True)),
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),
        chain.tx(HOSP_A, KeyRelease(rid("r1"), DOC_B.public_key, bh("w1"))),
        chain.tx(DOC, anchor("r2", PAT2, "imaging")),
        chain.tx(HOSP_A, RegisterPatient(key("p3").public_key)),
    ])
    chain.run([
        chain.tx(PAT, RevokeConsent(rid("c1"))),
        chain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),
        chain.tx(DOC_B, RecordAccess(rid("r2"), "TREAT", emergency_reason="BTG")),
        chain.tx(DOC, anchor("r1b", PAT, "lab", supersedes="r1")),
        chain.tx(HOSP_B, ValidatorSetChange([], [])),
    ])
    chain.run([
        chain.tx(PAT, EraseRecord(rid("r1b"))),
        chain.tx(PAT2, RecordAccess(rid("r2"), "x")),
    ])


@pytest.mark.parametrize("use_tree", [True, False])
def test_same_blocks_same_roots_on_independent_stores(use_tree: bool) -> None:
    a = Chain.new(DictState(), use_tree=True)
    b = Chain.new(SortedState(), use_tree=use_tree)
    scenario(a)
    scenario(b)
    assert len(a.results) == len(b.results) == 5
    for ra, rb in zip(a.results, b.results, strict=True):
        assert ra.state_root == rb.state_root
        assert ra.results_bytes == rb.results_bytes
        assert ra.state_writes == rb.state_writes
        assert ra.tree_writes == rb.tree_writes
        assert ra.blob_deletes == rb.blob_deletes
    assert len({r.state_root for r in a.results}) == 5  # every block changed the root
    # the in-memory tree rebuilt from storage agrees with the one carried along
    assert a.tree is not None and StateTree.load(b.store).root == a.tree.root


def test_tree_must_match_state() -> None:
    chain = populated(Chain.new())
    stale = StateTree.empty()
    with pytest.raises(ValueError):
        apply_block(chain.store, chain.block([]), chain.ctx, stale)
    with pytest.raises(ValueError):
        apply_block(chain.store, chain.block([]), chain.ctx, tx_hashes=[b"\0" * 32])


def test_given_tx_hashes_and_sig_cache_give_the_same_result() -> None:
    plain = Chain.new()
    populated(plain)
    cache = SigCache()
    cached = Chain.new(sig_cache=cache)
    populated(cached)
    txs = [plain.tx(PAT, grant("c1", DOC_B)), plain.tx(DOC_B, RecordAccess(rid("r1"), "TREAT")),
           make_tx(PAT, "other-chain", 9, EraseRecord(rid("r1")))]
    block = plain.block(txs)
    hashes = [tx.hash() for tx in txs]
    a = apply_block(plain.store, block, plain.ctx, plain.tree)
    b = apply_block(cached.store, block, cached.ctx, cached.tree, tx_hashes=hashes)
    assert a.results_bytes == b.results_bytes and a.state_root == b.state_root
    assert [r.code for r in b.results] == ["OK", "OK", "WRONG_CHAIN"]
    assert hashes[0] in cache and hashes[2] not in cache


# --- cost figure (printed, never asserted) ------------------------------------------


def test_print_apply_cost_per_tx_for_500_tx_block(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints apply and commit cost per tx; signatures are pre-verified (cached).

    apply is pure, so the same block is applied several times and the best
    CPU time is printed (the machine is shared). The block: 250 AnchorRecord
    and 250 GrantConsent txs from 252 senders.
    """
    cache = SigCache()
    chain = Chain.new(SortedState(), sig_cache=cache)
    orgs = [HOSP_A, HOSP_B]
    patients = [key(f"bench-pat-{i}") for i in range(250)]
    docs = [key(f"bench-doc-{i}") for i in range(50)]
    setup = [chain.tx(orgs[i % 2], RegisterPatient(p.public_key)) for i, p in enumerate(patients)]
    setup += [chain.tx(orgs[i % 2], RegisterClinician(d.public_key, f"d{i}"))
              for i, d in enumerate(docs)]
    assert set(chain.run(setup)) == {"OK"}
    txs: list[Tx] = []
    for i, p in enumerate(patients):
        org = orgs[i % 2]
        txs.append(chain.tx(org, AnchorRecord(
            rid(f"b{i}"), p.public_key, "lab", org.public_key, bh(f"b{i}"),
            sorted([p.public_key, org.public_key]))))
        txs.append(chain.tx(p, grant(f"bc{i}", docs[i % 50])))
    block = chain.block(txs)
    for tx in txs:  # exclude signature checks: as if the mempool verified them
        cache.add(tx.hash())
    hashes = [tx.hash() for tx in txs]  # known to the node: the leaves of tx_root
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        result = apply_block(chain.store, block, chain.ctx, chain.tree, tx_hashes=hashes)
        best = min(best, time.process_time() - t0)
    again = apply_block(chain.store, block, chain.ctx, chain.tree)
    assert again.state_root == result.state_root and again.state_writes == result.state_writes
    t1 = time.process_time()
    chain.store.commit(result)
    commit = time.process_time() - t1
    assert {r.code for r in result.results} == {"OK"}
    n = len(txs)
    with capsys.disabled():
        print(f"\n[apply] {n}-tx block: apply {1e6 * best / n:.1f} us/tx (best of 5, CPU time), "
              f"in-memory test-store commit {1e6 * commit / n:.1f} us/tx; "
              f"{len(result.state_writes)} state writes, {len(result.tree_writes)} tree writes")


def test_encoded_state_values_are_canonical_records() -> None:
    chain = Chain.new()
    scenario(chain)
    assert isinstance(chain.store, DictState)
    for stored, raw in chain.store.state.items():
        prefix = stored[2:3]
        assert prefix in b"IRCGUEM"
        # stored value = sha256(value) + value, value a canonical encoding
        value = raw[32:]
        assert hashlib.sha256(value).digest() == raw[:32]
        assert codec.encode(codec.decode(value, object)) == value


# --- determinism over random workloads (hypothesis) ---------------------------------

_ACTORS = [HOSP_A, HOSP_B, DOC, DOC_B, PAT, PAT2]
_NAMES = ["r1", "r2", "r3"]
_CONSENTS = ["c1", "c2"]


@st.composite
def random_bodies(draw: st.DrawFn) -> tuple[KeyPair, Body]:
    """A signer and a body from a small universe, so that rules both pass and fail."""
    def signer_or(*likely: KeyPair) -> KeyPair:
        pool = list(likely) if draw(st.sampled_from([True, True, True, False])) else _ACTORS
        return draw(st.sampled_from(pool))

    who = draw(st.sampled_from(_ACTORS))
    name = draw(st.sampled_from(_NAMES))
    kind = draw(st.integers(0, 8))
    body: Body
    if kind == 0:
        signer = signer_or(HOSP_A, HOSP_B)
        body = RegisterClinician(key(draw(st.sampled_from(["n1", "n2"]))).public_key, "N")
    elif kind == 1:
        signer = signer_or(HOSP_A, HOSP_B)
        body = RegisterPatient(key(draw(st.sampled_from(["p1", "p2"]))).public_key)
    elif kind == 2:
        signer = signer_or(HOSP_A, DOC)
        patient = draw(st.sampled_from([PAT, PAT2]))
        prev = draw(st.one_of(st.none(), st.sampled_from(_NAMES)))
        body = anchor(name, patient, draw(st.sampled_from(["lab", "imaging"])),
                      None if prev == name else prev,
                      custodian=draw(st.sampled_from([HOSP_A, HOSP_A, HOSP_B])))
    elif kind == 3:
        signer = signer_or(PAT, PAT2)
        body = grant(draw(st.sampled_from(_CONSENTS)), who,
                     categories=draw(st.sampled_from([("lab",), ("imaging", "lab")])),
                     emergency=draw(st.booleans()))
    elif kind == 4:
        signer = signer_or(PAT, PAT2)
        body = RevokeConsent(rid(draw(st.sampled_from(_CONSENTS))))
    elif kind == 5:
        signer = signer_or(*_ACTORS)
        body = RecordAccess(rid(name), "TREAT",
                            emergency_reason=draw(st.sampled_from([None, "BTG", "NO"])))
    elif kind == 6:
        signer = signer_or(HOSP_A)
        body = KeyRelease(rid(name), who.public_key, bh(f"w-{name}-{who.public_key.hex()}"))
    elif kind == 7:
        signer = signer_or(PAT, PAT2)
        body = EraseRecord(rid(name))
    else:
        signer = signer_or(*_ACTORS)
        body = ValidatorSetChange([], [])
    return signer, body


@settings(max_examples=40)
@given(st.lists(st.lists(random_bodies(), max_size=12), min_size=1, max_size=4),
       st.lists(st.sampled_from([None] * 10 + [-1, 1]), min_size=48, max_size=48))
def test_random_workloads_are_deterministic(
    blocks: list[list[tuple[KeyPair, Body]]], nonce_noise: list[int | None]
) -> None:
    a = populated(Chain.new(DictState(), use_tree=True))
    b = populated(Chain.new(SortedState(), use_tree=False))
    noise = iter(nonce_noise)
    for bodies in blocks:
        txs = []
        for signer, body in bodies:
            n = a.nonces.get(signer.public_key, 0)
            delta = next(noise, None)
            tx = a.tx(signer, body, n + delta if delta is not None and n + delta >= 0 else n)
            b.nonces[signer.public_key] = a.nonces[signer.public_key]
            txs.append(tx)
        codes_a = a.run(txs)
        codes_b = b.run(txs)
        assert codes_a == codes_b
        for code in codes_a:
            event(code)
        ra, rb = a.results[-1], b.results[-1]
        assert (ra.state_root, ra.state_writes, ra.tree_writes, ra.blob_deletes) == (
            rb.state_root, rb.state_writes, rb.tree_writes, rb.blob_deletes)
    assert a.tree is not None and StateTree.load(b.store).root == a.tree.root


def test_oversized_and_malformed_fields_in_a_block_change_nothing() -> None:
    chain = populated(Chain.new())
    small = ApplyContext(CHAIN, chain.ctx.policy, Limits(max_tx_bytes=200))
    big = make_tx(HOSP_A, CHAIN, chain.nonces[HOSP_A.public_key],
                  RegisterClinician(key("n").public_key, "x" * 60))
    short_key = make_tx(HOSP_A, CHAIN, chain.nonces[HOSP_A.public_key],
                        RegisterPatient(b"\x01" * 31))
    result = apply_block(chain.store, chain.block([big, short_key]), small, chain.tree)
    assert [r.code for r in result.results] == ["TOO_LARGE", "INVALID_TX"]
    assert result.state_writes == [] and result.state_root == chain.root()
