"""Executing blocks: the only way the ledger state changes.

:func:`apply_block` runs a block's txs in order over a :class:`StateView`
overlay and returns an :class:`~ledger.results.ApplyResult` (per-tx result
codes, sorted state writes, tree writes, the new state root, the blobs to
shred and the new audit entries). It never writes storage, never reads a blob
and never reads a clock: block time is ``block.header.time_ms``.

A failing tx never aborts the block; it is recorded with its error code.
Nonce semantics (CometBFT-style):

* a tx that fails a stateless check (shape, chain id, signature), whose sender
  is unknown or whose nonce is not the sender's next one changes nothing - not
  even a nonce (it was not validly sent by that account at this point);
* a tx that is validly signed with the right nonce but breaks a rule consumes
  its nonce and changes nothing else, so it can never be replayed later when
  the rule might pass;
* a :class:`~ledger.tx.RecordAccess` that the consent rules refuse is a
  *successful* audit: the entry is written with outcome ``CONSENT_DENIED`` or
  ``ERASED``, and that is also the tx's result code.

Each rule checks everything before its first write, so a refusal leaves the
overlay untouched without any rollback.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec

from ledger import codec, consent
from ledger.block import Block
from ledger.consent import BreakGlassPolicy, Candidate, ReaderFacts, RecordFacts
from ledger.errors import (
    AlreadyExistsError,
    AlreadyRevokedError,
    ConsentDeniedError,
    DecodeError,
    ErasedError,
    InvalidTxError,
    LimitExceededError,
    NonceGapError,
    NonceReplayError,
    NotFoundError,
    NotSupportedError,
    StateRuleError,
    TooLargeError,
    UnauthorizedError,
    UnknownSenderError,
)
from ledger.genesis import Genesis
from ledger.results import OK, ApplyResult, TxResult, encode_results
from ledger.state import (
    KIND_CLINICIAN,
    KIND_ORGANISATION,
    KIND_PATIENT,
    AuditEntry,
    ConsentEntry,
    EmergencyGrant,
    GrantRef,
    Identity,
    ReaderWrap,
    RecordMeta,
    StateView,
    audit_key,
    consent_key,
    emergency_key,
    grant_key,
    identity_key,
    record_key,
)
from ledger.state_tree import (
    EMPTY_ROOT,
    ROOT_ID,
    StateTree,
    dirty_bucket_hashes,
    update_from_reader,
)
from ledger.tx import (
    AnchorRecord,
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
    tx_hash,
)
from ledger.validate import DEFAULT_LIMITS, Limits, SigCache, check_tx
from storage.api import StateReader

CONSENT_DENIED = ConsentDeniedError.code
ERASED = ErasedError.code
_MEMPOOL_HEIGHT = 2**62  # stands for "the next block" in stateful pre-checks


@dataclass(frozen=True, slots=True)
class ApplyContext:
    """What apply needs besides state and block: all fixed by genesis.

    ``sig_cache`` holds hashes of txs whose signatures this node already
    verified; apply verifies the others (and caches them).
    """

    chain_id: str
    policy: BreakGlassPolicy
    limits: Limits = DEFAULT_LIMITS
    sig_cache: SigCache | None = None

    @classmethod
    def from_genesis(cls, genesis: Genesis, sig_cache: SigCache | None = None) -> ApplyContext:
        return cls(genesis.chain_id, genesis.policy.break_glass(), sig_cache=sig_cache)


@dataclass(slots=True)
class _Block:
    """Per-block environment handed to every rule."""

    ctx: ApplyContext
    height: int
    time_ms: int
    blob_deletes: list[bytes] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)


Rule = Callable[[StateView, _Block, Tx, Identity, bytes, int], str]


def apply_block(
    state: StateReader,
    block: Block,
    ctx: ApplyContext,
    tree: StateTree | None = None,
    *,
    tx_hashes: Sequence[bytes] | None = None,
) -> ApplyResult:
    """Execute ``block`` on the committed ``state``; see the module docstring.

    ``tree`` is the in-memory state tree of ``state`` (a node keeps one from
    block to block: ``result.tree`` is the next one); without it the tree
    nodes are read from ``state``, which is slower but gives the same root.
    ``tx_hashes``, if the caller has them (they are the leaves of the block's
    ``tx_root``), must be the hashes of ``block.txs``; they spare re-encoding
    and re-hashing every tx.
    """
    stored_root = state.get_tree_node(ROOT_ID) or EMPTY_ROOT
    if tree is not None and tree.root != stored_root:
        raise ValueError("the state tree given does not belong to this state")
    if tx_hashes is not None and len(tx_hashes) != len(block.txs):
        raise ValueError("tx_hashes does not match the block's txs")
    view = StateView(state)
    env = _Block(ctx, block.header.height, block.header.time_ms)
    hashes: list[bytes] = []
    results: list[TxResult] = []
    for index, tx in enumerate(block.txs):
        raw: bytes | None = None
        if tx_hashes is None:
            raw = codec.encode(tx)
            txh = tx_hash(raw)
        else:
            txh = tx_hashes[index]
        hashes.append(txh)
        results.append(TxResult(_apply_tx(view, env, tx, raw, txh, index)))
    buckets = dirty_bucket_hashes(view, tree)
    new_tree: StateTree | None = None
    if tree is not None:
        new_tree, tree_writes = tree.update(buckets)
        root = new_tree.root
    else:
        tree_writes, root = update_from_reader(state, buckets)
    return ApplyResult(
        height=env.height,
        tx_hashes=hashes,
        results=results,
        results_bytes=encode_results(results),
        state_writes=view.writes(),
        tree_writes=sorted(tree_writes),
        state_root=root,
        blob_deletes=env.blob_deletes,
        audit_entries=env.audit,
        tree=new_tree,
    )


def _apply_tx(
    view: StateView, env: _Block, tx: Tx, raw: bytes | None, txh: bytes, index: int
) -> str:
    ctx = env.ctx
    try:
        if ctx.sig_cache is None or txh not in ctx.sig_cache:  # else: all checked before
            if raw is None:
                raw = codec.encode(tx)
            if len(raw) > ctx.limits.max_tx_bytes:
                raise TooLargeError(f"tx of {len(raw)} bytes")
            check_tx(tx, txh, ctx.chain_id, ctx.limits, ctx.sig_cache)
        sender = _sender(view, tx, None)
    except (DecodeError, InvalidTxError, StateRuleError) as exc:
        return exc.code
    try:
        code = _RULES[type(tx.body)](view, env, tx, sender, txh, index)
    except StateRuleError as exc:
        code = exc.code
    current = view.identity(tx.sender) or sender  # a rule may have updated the sender
    view.put(identity_key(tx.sender), msgspec.structs.replace(current, nonce=tx.nonce + 1))
    return code


def _sender(view: StateView, tx: Tx, expected_nonce: int | None) -> Identity:
    sender = view.identity(tx.sender)
    if sender is None:
        raise UnknownSenderError(f"sender {tx.sender.hex()[:16]} is not registered")
    expected = sender.nonce if expected_nonce is None else expected_nonce
    if tx.nonce < expected:
        raise NonceReplayError(f"nonce {tx.nonce} already used (next is {expected})")
    if tx.nonce > expected:
        raise NonceGapError(f"nonce {tx.nonce} skips ahead (next is {expected})")
    return sender


def check_tx_against_state(
    state: StateReader,
    tx: Tx,
    time_ms: int,
    ctx: ApplyContext,
    *,
    expected_nonce: int | None = None,
) -> None:
    """Stateful pre-check for mempool admission; raises the typed error apply would record.

    ``tx`` must already have passed :func:`ledger.validate.check_tx_bytes`.
    ``expected_nonce`` overrides the committed next nonce (a mempool holding
    earlier txs of the same sender passes the one after them). The rule runs
    on a scratch overlay as if in the next block at ``time_ms``; a refused
    read (``RecordAccess``) passes, since refusals are audited on chain.
    """
    view = StateView(state)
    sender = _sender(view, tx, expected_nonce)
    env = _Block(ctx, _MEMPOOL_HEIGHT, time_ms)
    _RULES[type(tx.body)](view, env, tx, sender, tx_hash(codec.encode(tx)), 0)


# --- rules ---------------------------------------------------------------------------


def _need_org(sender: Identity, what: str) -> None:
    if sender.kind != KIND_ORGANISATION:
        raise UnauthorizedError(f"only an organisation may {what}")


def _new_identity(view: StateView, key: bytes) -> None:
    if view.identity(key) is not None:
        raise AlreadyExistsError(f"key {key.hex()[:16]} is already registered")


def _register_org(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                  index: int) -> str:
    raise UnauthorizedError("organisations are registered in genesis only")


def _register_clinician(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                        index: int) -> str:
    body = tx.body
    assert isinstance(body, RegisterClinician)
    _need_org(sender, "register a clinician")
    _new_identity(view, body.clinician)
    view.put(identity_key(body.clinician), Identity(KIND_CLINICIAN, tx.sender, body.display_name))
    return OK


def _register_patient(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                      index: int) -> str:
    body = tx.body
    assert isinstance(body, RegisterPatient)
    _need_org(sender, "register a patient")
    _new_identity(view, body.patient)
    view.put(identity_key(body.patient), Identity(KIND_PATIENT, tx.sender, ""))
    return OK


def _anchor_record(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                   index: int) -> str:
    body = tx.body
    assert isinstance(body, AnchorRecord)
    if not (
        (sender.kind == KIND_ORGANISATION and tx.sender == body.custodian)
        or (sender.kind == KIND_CLINICIAN and sender.org == body.custodian)
    ):
        raise UnauthorizedError("only the custodian or its clinicians may anchor its records")
    if view.patient(body.patient) is None:
        raise NotFoundError("patient is not registered")
    if view.record(body.record_id) is not None:
        raise AlreadyExistsError(f"record {body.record_id.hex()[:16]} exists")
    for reader in body.readers:
        if view.identity(reader) is None:
            raise NotFoundError(f"reader {reader.hex()[:16]} is not registered")
    if body.supersedes is not None:
        old = view.record(body.supersedes)
        if old is None:
            raise NotFoundError("superseded record does not exist")
        if old.patient != body.patient:
            raise UnauthorizedError("superseded record belongs to another patient")
        if old.erased_at is not None:
            raise ErasedError("superseded record is erased")
    view.put(
        record_key(body.record_id),
        RecordMeta(
            patient=body.patient,
            category=body.category,
            custodian=body.custodian,
            blob_hash=body.blob_hash,
            readers=[ReaderWrap(r) for r in body.readers],
            supersedes=body.supersedes,
            anchored_at=env.height,
        ),
    )
    return OK


def _grant_consent(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                   index: int) -> str:
    body = tx.body
    assert isinstance(body, GrantConsent)
    if sender.kind != KIND_PATIENT:
        raise UnauthorizedError("only a patient may grant consent")
    if view.consent(body.consent_id) is not None:
        raise AlreadyExistsError(f"consent {body.consent_id.hex()[:16]} exists")
    grantee = view.identity(body.grantee)
    if grantee is None:
        raise NotFoundError("grantee is not registered")
    if grantee.kind not in (KIND_CLINICIAN, KIND_ORGANISATION):
        raise StateRuleError("grantee must be a clinician or an organisation")
    view.put(consent_key(body.consent_id), ConsentEntry(tx.sender, body, env.height))
    view.put(grant_key(tx.sender, body.grantee, body.consent_id), GrantRef())
    return OK


def _revoke_consent(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                    index: int) -> str:
    body = tx.body
    assert isinstance(body, RevokeConsent)
    entry = view.consent(body.consent_id)
    if entry is None:
        raise NotFoundError(f"consent {body.consent_id.hex()[:16]} does not exist")
    if entry.patient != tx.sender:
        raise UnauthorizedError("only the granting patient may revoke a consent")
    if entry.revoked_at is not None:
        raise AlreadyRevokedError(f"consent {body.consent_id.hex()[:16]} is already revoked")
    view.put(consent_key(body.consent_id), msgspec.structs.replace(entry, revoked_at=env.height))
    return OK


def _facts(view: StateView, record_id: bytes, record: RecordMeta, reader: bytes,
           ident: Identity | None) -> tuple[RecordFacts, ReaderFacts]:
    facts = RecordFacts(
        record_id, record.patient, record.category, record.custodian, record.erased_at is not None
    )
    if ident is None:
        return facts, ReaderFacts(reader)
    return facts, ReaderFacts(
        reader,
        is_organisation=ident.kind == KIND_ORGANISATION,
        clinician_of=ident.org if ident.kind == KIND_CLINICIAN else None,
    )


def _candidates(view: StateView, patient: bytes, reader: ReaderFacts,
                consent_id: bytes | None) -> Iterator[Candidate]:
    """The patient's grants that could cover ``reader``; lazy, so the patient and
    custodian paths of :func:`consent.evaluate_access` never scan."""
    if consent_id is not None:
        ids = [consent_id]
    else:
        ids = view.grant_ids(patient, reader.key)
        if reader.clinician_of is not None:
            ids += view.grant_ids(patient, reader.clinician_of)
    for cid in ids:
        entry = view.consent(cid)
        if entry is not None:
            yield Candidate(entry.patient, entry.grant, entry.revoked_at)


def _record_access(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                   index: int) -> str:
    body = tx.body
    assert isinstance(body, RecordAccess)
    record = view.record(body.record_id)
    if record is None:
        raise NotFoundError(f"record {body.record_id.hex()[:16]} does not exist")
    rfacts, reader = _facts(view, body.record_id, record, tx.sender, sender)
    decision = consent.evaluate_access(
        rfacts,
        reader,
        _candidates(view, record.patient, reader, body.consent_id),
        time_ms=env.time_ms,
        height=env.height,
        purpose=body.purpose,
        policy=env.ctx.policy,
        consent_id=body.consent_id,
        emergency_reason=body.emergency_reason,
    )
    if decision.allowed:
        outcome = OK
    elif decision.reason == consent.ERASED:
        outcome = ERASED
    else:
        outcome = CONSENT_DENIED
    patient = view.patient(record.patient)
    if patient is None:  # anchoring checked it; identities are never removed
        raise NotFoundError("patient is not registered")
    entry = AuditEntry(
        patient=record.patient,
        seq=patient.audit_count,
        height=env.height,
        index=index,
        tx_hash=txh,
        reader=tx.sender,
        record_id=body.record_id,
        purpose=body.purpose,
        outcome=outcome,
        reason=decision.reason,
        emergency=decision.emergency,
        consent_id=decision.consent_id,
        emergency_reason=body.emergency_reason,
    )
    view.put(audit_key(record.patient, entry.seq), entry)
    view.put(
        identity_key(record.patient),
        msgspec.structs.replace(patient, audit_count=patient.audit_count + 1),
    )
    if decision.allowed and decision.emergency:
        view.put(emergency_key(body.record_id, tx.sender), EmergencyGrant(env.height))
    env.audit.append(entry)
    return outcome


def _key_release(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                 index: int) -> str:
    body = tx.body
    assert isinstance(body, KeyRelease)
    record = view.record(body.record_id)
    if record is None:
        raise NotFoundError(f"record {body.record_id.hex()[:16]} does not exist")
    if record.erased_at is not None:
        raise ErasedError("record is erased")
    if sender.kind != KIND_ORGANISATION or tx.sender != record.custodian:
        raise UnauthorizedError("only the custodian organisation may release a key")
    ident = view.identity(body.reader)
    if ident is None:
        raise NotFoundError("reader is not registered")
    readers = [r.reader for r in record.readers]
    pos = bisect.bisect_left(readers, body.reader)
    if pos < len(readers) and readers[pos] == body.reader:
        raise AlreadyExistsError("reader already holds a key wrap")
    if len(readers) >= env.ctx.limits.max_record_readers:
        raise LimitExceededError(f"record has {len(readers)} readers")
    rfacts, reader = _facts(view, body.record_id, record, body.reader, ident)
    decision = consent.evaluate_access(
        rfacts,
        reader,
        _candidates(view, record.patient, reader, None),
        time_ms=env.time_ms,
        height=env.height,
        purpose=None,
        policy=env.ctx.policy,
    )
    if not decision.allowed and view.emergency_grant(body.record_id, body.reader) is None:
        raise ConsentDeniedError("reader is not allowed to read this record")
    wraps = list(record.readers)
    wraps.insert(pos, ReaderWrap(body.reader, body.wrap_blob_hash))
    view.put(record_key(body.record_id), msgspec.structs.replace(record, readers=wraps))
    return OK


def _erase_record(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                  index: int) -> str:
    body = tx.body
    assert isinstance(body, EraseRecord)
    record = view.record(body.record_id)
    if record is None:
        raise NotFoundError(f"record {body.record_id.hex()[:16]} does not exist")
    if record.patient != tx.sender:
        raise UnauthorizedError("only the record's patient may erase it")
    if record.erased_at is not None:
        raise ErasedError("record is already erased")
    seen: set[bytes] = set()
    record_id: bytes | None = body.record_id
    current: RecordMeta | None = record
    # Versions only ever supersede older, existing records, so this chain ends;
    # ``seen`` guards against a corrupt store anyway.
    while record_id is not None and current is not None and current.erased_at is None:
        if record_id in seen:
            break
        seen.add(record_id)
        view.put(record_key(record_id), msgspec.structs.replace(current, erased_at=env.height))
        for blob in current.blob_hashes():
            if blob not in env.blob_deletes:
                env.blob_deletes.append(blob)
        record_id = current.supersedes
        current = None if record_id is None else view.record(record_id)
    return OK


def _validator_set_change(view: StateView, env: _Block, tx: Tx, sender: Identity, txh: bytes,
                          index: int) -> str:
    raise NotSupportedError("validator-set changes are reserved")


_RULES: dict[type, Rule] = {
    RegisterOrganization: _register_org,
    RegisterClinician: _register_clinician,
    RegisterPatient: _register_patient,
    AnchorRecord: _anchor_record,
    GrantConsent: _grant_consent,
    RevokeConsent: _revoke_consent,
    RecordAccess: _record_access,
    KeyRelease: _key_release,
    EraseRecord: _erase_record,
    ValidatorSetChange: _validator_set_change,
}
