"""The validator set: who may vote, how many make a quorum, who leads a view.

Built once from the genesis validator keys (in genesis order). With ``n``
validators the set tolerates ``f = (n - 1) // 3`` Byzantine ones; a quorum is
``n - f`` (``2f + 1`` when ``n = 3f + 1``), so any two quorums share at least
one honest validator. The primary of view ``v`` is ``validators[v mod n]``.

Signature checks are the CPU cost of consensus, so verified
``(key, message, signature)`` triples are remembered in a bounded cache: a
PREPARE seen directly and again inside a view change is verified once.
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.errors import (
    BadConsensusSignatureError,
    InvalidProofError,
    NotAValidatorError,
)
from consensus.messages import (
    MAX_VALIDATORS,
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    Envelope,
    Payload,
    Prepare,
    PreparedCert,
    PreparedProof,
    SignedViewChange,
    VoteSig,
    sign_bytes,
)
from ledger.hashing import sha256
from ledger.keys import PUBLIC_KEY_SIZE, verify

_CACHE_LIMIT = 200_000


class ValidatorSet:
    """Immutable set of validator public keys for one chain."""

    def __init__(self, chain_id: str, validators: Sequence[bytes]) -> None:
        keys = tuple(bytes(v) for v in validators)
        if not keys:
            raise ValueError("a validator set needs at least one validator")
        if len(keys) > MAX_VALIDATORS:
            raise ValueError(f"at most {MAX_VALIDATORS} validators")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate validator key")
        if any(len(k) != PUBLIC_KEY_SIZE for k in keys):
            raise ValueError("validator keys must be 32-byte ed25519 public keys")
        self.chain_id = chain_id
        self.validators = keys
        self._index = {k: i for i, k in enumerate(keys)}
        self.n = len(keys)
        self.f = (self.n - 1) // 3
        self.quorum = self.n - self.f
        self.weak_quorum = self.f + 1
        self._verified: dict[bytes, None] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def index(self, key: bytes) -> int:
        return self._index[key]

    def primary(self, view: int) -> bytes:
        return self.validators[view % self.n]

    # --- signatures ------------------------------------------------------------

    def verify_signature(self, sender: bytes, payload: Payload, signature: bytes) -> bool:
        """True iff ``sender`` is a validator and signed ``payload`` on this chain."""
        if sender not in self._index:
            return False
        message = sign_bytes(self.chain_id, payload)
        key = sha256(sender + signature + message)
        if key in self._verified:
            return True
        if not verify(sender, message, signature):
            return False
        if len(self._verified) >= _CACHE_LIMIT:
            # FIFO eviction: dicts keep insertion order.
            del self._verified[next(iter(self._verified))]
        self._verified[key] = None
        return True

    def check_envelope(self, env: Envelope) -> None:
        if env.sender not in self._index:
            raise NotAValidatorError("sender is not a validator")
        if not self.verify_signature(env.sender, env.payload, env.signature):
            raise BadConsensusSignatureError("bad signature")

    def check_quorum(self, payload: Payload, sigs: Sequence[VoteSig]) -> None:
        """Raise :class:`InvalidProofError` unless a quorum of distinct validators signed."""
        seen: set[bytes] = set()
        for s in sigs:
            if s.validator in seen:
                raise InvalidProofError("duplicate signer in proof")
            if not self.verify_signature(s.validator, payload, s.signature):
                raise InvalidProofError("invalid signature in proof")
            seen.add(s.validator)
        if len(seen) < self.quorum:
            raise InvalidProofError(f"{len(seen)} signatures, quorum is {self.quorum}")

    # --- proofs -------------------------------------------------------------------

    def check_certificate(self, cert: CommitCertificate) -> None:
        self.check_quorum(Commit(cert.view, cert.height, cert.digest), cert.commits)

    def check_prepared(self, proof: PreparedProof | PreparedCert) -> None:
        self.check_quorum(
            Prepare(proof.view, proof.height, proof.digest, proof.parent), proof.prepares
        )

    def check_checkpoint(self, proof: CheckpointProof, genesis: CheckpointProof) -> None:
        if proof.height == 0:
            if proof != genesis:
                raise InvalidProofError("height-0 checkpoint is not this chain's genesis")
            return
        self.check_quorum(
            Checkpoint(proof.height, proof.block_digest, proof.state_digest), proof.signatures
        )

    def check_signed_view_change(self, svc: SignedViewChange) -> None:
        if svc.sender not in self._index:
            raise NotAValidatorError("view change from a non-validator")
        if not self.verify_signature(svc.sender, svc.view_change, svc.signature):
            raise InvalidProofError("bad view change signature")


def sorted_sigs(validators: ValidatorSet, sigs: dict[bytes, bytes], limit: int) -> list[VoteSig]:
    """A deterministic proof: the first ``limit`` signers in validator order."""
    ordered = sorted(sigs.items(), key=lambda kv: validators.index(kv[0]))
    return [VoteSig(k, s) for k, s in ordered[:limit]]
