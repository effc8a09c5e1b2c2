"""PBFT wire messages: one canonical encoding, every one signed.

Every message travels as ``Envelope(sender, payload, signature)``; the
signature covers ``SIGN_CONSENSUS || encode(SignedPart(chain_id, payload))``
so a vote can never be replayed on another chain or in another role. Votes
gathered into proofs (prepared proofs, checkpoint proofs, commit certificates)
keep only ``(validator, signature)`` pairs: the signed payload is rebuilt from
the proof's own fields, so a proof is verifiable offline against the validator
set alone.

Everything here is pure data plus ``validate_basic()`` (field bounds that need
no state). Verification against the validator set lives in
:mod:`consensus.validators`.
"""

from __future__ import annotations

from typing import Protocol

from consensus.errors import BadMessageError, RemoteProtocolError
from ledger import codec
from ledger.codec import Record
from ledger.errors import LedgerError
from ledger.hashing import HASH_SIZE, SIGN_CONSENSUS
from ledger.keys import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, KeyPair

MAX_VALIDATORS = 256
MAX_PREPARED_PER_VIEW_CHANGE = 4096
MAX_BLOCKS_PER_RESPONSE = 1024


class VoteSig(Record, frozen=True):
    """One validator's signature over a payload rebuilt from the enclosing proof."""

    validator: bytes
    signature: bytes


class PrePrepare(Record, frozen=True, tag=1):
    view: int
    height: int
    digest: bytes
    block: bytes


class Prepare(Record, frozen=True, tag=2):
    """A vote for ``digest`` at ``height``, which the voter checked extends ``parent``.

    Signing the parent makes a prepared proof attest the chain link by itself,
    so a view change can carry digests instead of whole blocks (see
    :class:`ViewChange`) and still let every replica cut the re-proposed chain
    where it breaks.
    """

    view: int
    height: int
    digest: bytes
    parent: bytes


class Commit(Record, frozen=True, tag=3):
    view: int
    height: int
    digest: bytes


class Checkpoint(Record, frozen=True, tag=4):
    """After executing ``height``: the block digest there and the app's state digest."""

    height: int
    block_digest: bytes
    state_digest: bytes


class PreparedProof(Record, frozen=True):
    """A block prepared in ``view``: the block itself and a quorum of PREPARE signatures.

    Kept in the WAL, so a restarted replica still holds the blocks it prepared.
    """

    view: int
    height: int
    digest: bytes
    parent: bytes
    block: bytes
    prepares: list[VoteSig]

    def cert(self) -> PreparedCert:
        return PreparedCert(self.view, self.height, self.digest, self.parent, self.prepares)


class PreparedCert(Record, frozen=True):
    """A prepared proof without its block: what a VIEW-CHANGE carries.

    A VIEW-CHANGE with whole blocks grows with block size times pipeline depth,
    and a NEW-VIEW carries a quorum of them: under load that outgrew the
    network's frame limit and view changes could never complete. Blocks reach
    the new primary separately (:class:`BlockOffer`) and the replicas through
    the new primary's PRE-PREPAREs.
    """

    view: int
    height: int
    digest: bytes
    parent: bytes
    prepares: list[VoteSig]


class CheckpointProof(Record, frozen=True):
    """A stable checkpoint: a quorum of matching CHECKPOINT signatures.

    Height 0 is the genesis checkpoint; it carries no signatures and is valid
    only if it names the configured genesis digest.
    """

    height: int
    block_digest: bytes
    state_digest: bytes
    signatures: list[VoteSig]


class CommitCertificate(Record, frozen=True):
    """Proof that ``digest`` is final at ``height``: a quorum of COMMIT signatures."""

    height: int
    view: int
    digest: bytes
    commits: list[VoteSig]

    def verify(self, validators: ValidatorSetLike) -> None:
        """Raise :class:`InvalidProofError` unless a quorum of validators signed it."""
        validators.check_quorum(Commit(self.view, self.height, self.digest), self.commits)

    def is_valid(self, validators: ValidatorSetLike) -> bool:
        try:
            self.verify(validators)
        except RemoteProtocolError:
            return False
        return True


class ViewChange(Record, frozen=True, tag=5):
    """A replica leaves for ``new_view`` with what it knows is final and what it prepared.

    ``committed`` is the certificate of the sender's highest committed height
    when that is above the checkpoint (None otherwise); ``prepared`` lists only
    heights above both. A committed height needs no prepared proof: its
    certificate fixes it and its ancestors, and laggards fetch them by state
    transfer. That keeps a view change small however far the checkpoint lags.
    """

    new_view: int
    checkpoint: CheckpointProof
    committed: CommitCertificate | None
    prepared: list[PreparedCert]


class SignedViewChange(Record, frozen=True):
    sender: bytes
    view_change: ViewChange
    signature: bytes


class NewView(Record, frozen=True, tag=6):
    """The new primary's proof: a quorum of VIEW-CHANGEs for ``view``.

    Re-proposals are not listed: every replica recomputes them (digests) from
    the view changes (:func:`consensus.core.compute_new_view`), so a primary
    cannot smuggle in a block the proofs do not justify. The blocks follow as
    the new primary's PRE-PREPAREs, one per height.
    """

    view: int
    view_changes: list[SignedViewChange]


class BlockOffer(Record, frozen=True, tag=10):
    """A block the sender prepared, sent to the primary of ``new_view`` with its VIEW-CHANGE.

    The new primary must hold every block its NEW-VIEW re-proposes; it may have
    missed the old PRE-PREPARE. One block per message keeps frames small.
    """

    new_view: int
    height: int
    block: bytes


class StateRequest(Record, frozen=True, tag=7):
    from_height: int
    to_height: int


class CommittedBlock(Record, frozen=True):
    block: bytes
    certificate: CommitCertificate


class StateResponse(Record, frozen=True, tag=8):
    blocks: list[CommittedBlock]


class Status(Record, frozen=True, tag=9):
    """Sent when stalled, idle or only following by state transfer, and in answer
    to a STATUS from a lower view: peers further ahead answer with committed
    blocks, and f + 1 reporting a higher view make a replica left behind join it."""

    committed_height: int
    view: int


Payload = (
    PrePrepare
    | Prepare
    | Commit
    | Checkpoint
    | ViewChange
    | NewView
    | StateRequest
    | StateResponse
    | Status
    | BlockOffer
)


class SignedPart(Record, frozen=True):
    chain_id: str
    payload: Payload


class Envelope(Record, frozen=True):
    sender: bytes
    payload: Payload
    signature: bytes


class ValidatorSetLike(Protocol):
    """What proofs need from a validator set (see :class:`consensus.validators.ValidatorSet`)."""

    def check_quorum(self, payload: Payload, sigs: list[VoteSig]) -> None: ...


def sign_bytes(chain_id: str, payload: Payload) -> bytes:
    """The exact bytes a validator signs for ``payload`` on ``chain_id``."""
    return SIGN_CONSENSUS + codec.encode(SignedPart(chain_id, payload))


def sign(key: KeyPair, chain_id: str, payload: Payload) -> Envelope:
    return Envelope(key.public_key, payload, key.sign(sign_bytes(chain_id, payload)))


def encode_envelope(env: Envelope) -> bytes:
    return codec.encode(env)


def decode_envelope(data: bytes, max_size: int) -> Envelope:
    """Decode and ``validate_basic`` an envelope; any fault is a RemoteProtocolError."""
    try:
        env = codec.decode(data, Envelope, max_size=max_size)
    except LedgerError as exc:
        raise RemoteProtocolError(f"undecodable envelope: {exc.code}") from None
    validate_basic(env)
    return env


def payload_kind(payload: Payload) -> str:
    return type(payload).__name__


# --- validate_basic: bounds that need no state -------------------------------------


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise BadMessageError(what)


def _digest(d: bytes, what: str) -> None:
    _need(len(d) == HASH_SIZE, f"{what} must be {HASH_SIZE} bytes")


def _sigs(sigs: list[VoteSig], what: str) -> None:
    _need(len(sigs) <= MAX_VALIDATORS, f"too many signatures in {what}")
    for s in sigs:
        _need(len(s.validator) == PUBLIC_KEY_SIZE, f"bad validator key in {what}")
        _need(len(s.signature) == SIGNATURE_SIZE, f"bad signature size in {what}")


def _slot(view: int, height: int, digest: bytes) -> None:
    _need(view >= 0, "view must be >= 0")
    _need(height >= 1, "height must be >= 1")
    _digest(digest, "digest")


def validate_prepared(p: PreparedProof | PreparedCert) -> None:
    _slot(p.view, p.height, p.digest)
    _digest(p.parent, "parent digest")
    _sigs(p.prepares, "prepared proof")


def validate_checkpoint_proof(p: CheckpointProof) -> None:
    _need(p.height >= 0, "checkpoint height must be >= 0")
    _digest(p.block_digest, "checkpoint block digest")
    _digest(p.state_digest, "checkpoint state digest")
    _sigs(p.signatures, "checkpoint proof")


def validate_certificate(c: CommitCertificate) -> None:
    _slot(c.view, c.height, c.digest)
    _sigs(c.commits, "commit certificate")


def validate_view_change(vc: ViewChange) -> None:
    _need(vc.new_view >= 1, "view change must name a view >= 1")
    validate_checkpoint_proof(vc.checkpoint)
    _need(len(vc.prepared) <= MAX_PREPARED_PER_VIEW_CHANGE, "too many prepared proofs")
    last = vc.checkpoint.height
    if vc.committed is not None:
        validate_certificate(vc.committed)
        _need(vc.committed.height > last, "committed certificate not above the checkpoint")
        last = vc.committed.height
    for p in vc.prepared:
        validate_prepared(p)
        _need(p.height > last, "prepared proofs must be above the checkpoint, ascending")
        _need(p.view < vc.new_view, "prepared proof from a view not below the new view")
        last = p.height


def validate_payload(payload: Payload) -> None:
    """Raise :class:`BadMessageError` if ``payload`` breaks a stateless bound."""
    if isinstance(payload, PrePrepare | Prepare | Commit):
        _slot(payload.view, payload.height, payload.digest)
        if isinstance(payload, Prepare):
            _digest(payload.parent, "parent digest")
    elif isinstance(payload, Checkpoint):
        _need(payload.height >= 1, "checkpoint height must be >= 1")
        _digest(payload.block_digest, "checkpoint block digest")
        _digest(payload.state_digest, "checkpoint state digest")
    elif isinstance(payload, ViewChange):
        validate_view_change(payload)
    elif isinstance(payload, NewView):
        _need(payload.view >= 1, "new view must be >= 1")
        _need(len(payload.view_changes) <= MAX_VALIDATORS, "too many view changes")
        for svc in payload.view_changes:
            _need(len(svc.sender) == PUBLIC_KEY_SIZE, "bad view change sender")
            _need(len(svc.signature) == SIGNATURE_SIZE, "bad view change signature")
            _need(svc.view_change.new_view == payload.view, "view change for another view")
            validate_view_change(svc.view_change)
    elif isinstance(payload, StateRequest):
        _need(1 <= payload.from_height <= payload.to_height, "bad state request range")
    elif isinstance(payload, StateResponse):
        _need(len(payload.blocks) <= MAX_BLOCKS_PER_RESPONSE, "too many blocks in response")
        for cb in payload.blocks:
            validate_certificate(cb.certificate)
    elif isinstance(payload, BlockOffer):
        _need(payload.new_view >= 1 and payload.height >= 1, "bad block offer")
    elif isinstance(payload, Status):
        _need(payload.committed_height >= 0 and payload.view >= 0, "bad status")


def validate_basic(env: Envelope) -> None:
    _need(len(env.sender) == PUBLIC_KEY_SIZE, "bad sender key size")
    _need(len(env.signature) == SIGNATURE_SIZE, "bad signature size")
    validate_payload(env.payload)
