"""The sans-IO PBFT replica: inputs in, effects out.

Like h11's connection object, :class:`Replica` never touches a socket, clock,
file or random source. The driver (the Trio service, or the discrete-event
simulator in tests) feeds it inputs -- :meth:`Replica.receive`,
:meth:`Replica.timeout`, :meth:`Replica.notify_pending`,
:meth:`Replica.executed` -- and performs the returned effects **in order**. The
one ordering rule that matters: a :class:`Persist` must be durable (fsync)
before any later :class:`Broadcast` / :class:`SendTo` leaves the node; that is
what makes the WAL a guarantee against double-signing after a crash.

Protocol summary (see DESIGN.md "Consensus" and ``consensus/README`` notes in
the docstrings below):

* Heights are PBFT sequence numbers; the unit is an opaque block whose parent
  is the block one height below. The primary of view ``v`` proposes up to
  ``window`` heights beyond the last committed one (pipelining).
* A replica validates a proposal (through :class:`consensus.app.Application`)
  only on top of an accepted parent, and sends PREPARE for height ``h`` only
  when ``h - 1`` is committed, is the stable checkpoint, or is *prepared in
  the same view* with the parent's digest. This "prepared parent" rule is what
  lets a view change re-propose a consistent chain: if a block may have
  committed, every ancestor down to the checkpoint is prepared at ``f + 1``
  honest replicas, so the highest-view prepared proof per height forms an
  unbroken chain up to it (:func:`compute_new_view` cuts the chain at the first
  gap or mismatch; nothing above a cut can have committed).
* PREPARE quorum (the primary also sends PREPARE) makes the block *prepared*;
  the prepared proof goes to the WAL, then COMMIT. A quorum of COMMITs for one
  (view, height, digest) -- in any view -- is a commit certificate: final.
  Blocks are handed to the application strictly in height order.
* Checkpoints every ``checkpoint_interval`` heights; a quorum of matching ones
  is stable, everything at or below it is garbage collected and the WAL is
  rewritten. Messages outside ``(stable, max(stable, committed) + log_window]``
  are dropped and counted, so memory is bounded whatever peers send.
* View change per PBFT: a progress timeout sends VIEW-CHANGE(v+1) with the
  stable checkpoint proof and all prepared proofs above it; ``f + 1``
  validators claiming higher views (by VIEW-CHANGE, or by STATUS: how a
  replica that missed a NEW-VIEW finds the view again) make a replica join;
  peers answer a STATUS from a lower view with their own; the view-change timer
  starts only once a quorum of view changes for the target is in (so an
  isolated replica does not run ahead alone), doubling per consecutive view
  change up to a cap. The new primary sends NEW-VIEW with a quorum of view
  changes; every replica recomputes the re-proposals from them.
* State transfer: stable checkpoints above us, or a STATUS exchange when we
  stall, lead to STATE-REQUEST; every returned block must carry a commit
  certificate that verifies against the validator set and match its digest and
  parent. One honest peer suffices; forged certificates are counted. Requests
  are pipelined: up to ``state_pipeline`` ranges are in flight, and the next
  one is sent when a response arrives, *before* that response's blocks are
  handed to execution, so the peer serves while this node executes. Blocks
  that arrive ahead of a gap wait in a buffer bounded in heights and bytes;
  a block is committed only at the next height, with a verified certificate,
  on our chain -- exactly as an unpipelined transfer would.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from consensus.app import Application, VerdictKind
from consensus.errors import (
    BadConsensusSignatureError,
    InvalidProofError,
    LocalProtocolError,
    NotAValidatorError,
    RemoteProtocolError,
    SafetyViolationError,
)
from consensus.messages import (
    BlockOffer,
    Checkpoint,
    CheckpointProof,
    Commit,
    CommitCertificate,
    CommittedBlock,
    Envelope,
    NewView,
    Payload,
    Prepare,
    PreparedCert,
    PreparedProof,
    PrePrepare,
    SignedViewChange,
    StateRequest,
    StateResponse,
    Status,
    ViewChange,
    decode_envelope,
    encode_envelope,
    payload_kind,
    sign,
)
from consensus.validators import ValidatorSet, sorted_sigs
from consensus.wal import WalPrepared, WalRecord, WalStable, WalVote
from ledger import codec
from ledger.errors import LedgerError
from ledger.hashing import HASH_SIZE
from ledger.keys import KeyPair

GENESIS_STATE_DIGEST = bytes(HASH_SIZE)
#: An idle replica announces its height every this many resend ticks.
IDLE_STATUS_TICKS = 8

# --- configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Every knob of the core; durations are integer milliseconds of the driver's clock."""

    window: int = 4
    checkpoint_interval: int = 16
    log_window: int = 0  # 0: 2 * checkpoint_interval + window
    progress_timeout_ms: int = 2_000
    view_change_timeout_ms: int = 2_000
    max_timeout_ms: int = 60_000
    resend_interval_ms: int = 500
    state_request_timeout_ms: int = 2_000
    state_batch: int = 64
    #: State requests in flight at once: the next range is fetched while the
    #: previous one executes (see "State transfer" in the module docstring).
    state_pipeline: int = 2
    max_message_size: int = 32 * 1024 * 1024
    max_votes_per_sender_slot: int = 8
    max_view_changes_per_sender: int = 4
    #: What one peer may make us serve per resend tick: this many half-frames
    #: of blocks, in at most four times as many requests (small blocks: a
    #: pipelined laggard asks often, and a refused request costs it a timeout).
    max_state_requests_per_tick: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.window < 1:
            problems.append("window must be >= 1")
        if self.checkpoint_interval < 1:
            problems.append("checkpoint_interval must be >= 1")
        if self.log_window and self.log_window < self.checkpoint_interval + self.window:
            problems.append("log_window must be >= checkpoint_interval + window")
        for name in (
            "progress_timeout_ms",
            "view_change_timeout_ms",
            "max_timeout_ms",
            "resend_interval_ms",
            "state_request_timeout_ms",
            "state_batch",
            "state_pipeline",
            "max_message_size",
            "max_votes_per_sender_slot",
            "max_view_changes_per_sender",
            "max_state_requests_per_tick",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("consensus config: " + "; ".join(problems))

    @property
    def effective_log_window(self) -> int:
        return self.log_window or 2 * self.checkpoint_interval + self.window


# --- effects ------------------------------------------------------------------------


class TimerKind(enum.Enum):
    PROGRESS = "progress"  # no commit while work is pending -> view change
    VIEW_CHANGE = "view_change"  # no NEW-VIEW in time -> next view
    RESEND = "resend"  # periodic: re-send own votes and STATUS when stalled
    STATE = "state"  # state request unanswered -> next peer


@dataclass(frozen=True, slots=True)
class Broadcast:
    data: bytes
    kind: str


@dataclass(frozen=True, slots=True)
class SendTo:
    peer: bytes
    data: bytes
    kind: str


@dataclass(frozen=True, slots=True)
class Persist:
    """Append to the WAL; must be durable before any later send."""

    record: WalRecord


@dataclass(frozen=True, slots=True)
class RewriteWAL:
    """Atomically replace the WAL by ``records`` (after a stable checkpoint)."""

    records: tuple[WalRecord, ...]


@dataclass(frozen=True, slots=True)
class CommitBlock:
    """Execute ``block`` at ``height``; then call :meth:`Replica.executed`."""

    height: int
    block: bytes
    digest: bytes
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class StartTimer:
    """(Re)start the single timer of ``kind``; on expiry call ``timeout(kind, token)``."""

    kind: TimerKind
    token: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    kind: TimerKind


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two different validly signed messages from ``validator`` for one slot."""

    validator: bytes
    kind: str
    first: bytes
    second: bytes


Effect = (
    Broadcast | SendTo | Persist | RewriteWAL | CommitBlock | StartTimer | CancelTimer | Evidence
)


# --- statistics ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaStatistics:
    """Counters of one replica; each maps one-to-one onto a Prometheus metric."""

    view: int
    in_view_change: bool
    committed_height: int
    stable_checkpoint: int
    view_changes: int
    messages_in: tuple[tuple[str, int], ...]
    messages_out: tuple[tuple[str, int], ...]
    malformed: int
    invalid_signatures: int
    non_validator: int
    invalid_messages: int
    invalid_proposals: int
    equivocations: int
    dropped_out_of_window: int
    dropped_over_cap: int
    double_sign_refused: int
    forged_certificates: int
    state_requests_sent: int
    state_blocks_received: int
    state_target: int


@dataclass
class _Counters:
    view_changes: int = 0
    malformed: int = 0
    invalid_signatures: int = 0
    non_validator: int = 0
    invalid_messages: int = 0
    invalid_proposals: int = 0
    equivocations: int = 0
    dropped_out_of_window: int = 0
    dropped_over_cap: int = 0
    double_sign_refused: int = 0
    forged_certificates: int = 0
    state_requests_sent: int = 0
    state_blocks_received: int = 0
    messages_in: dict[str, int] = field(default_factory=dict)
    messages_out: dict[str, int] = field(default_factory=dict)


# --- per-height state ---------------------------------------------------------------


class _PP(enum.Enum):
    PENDING = 0  # accepted, not yet validated
    OK = 1  # validated (or certified by a NEW-VIEW, or our own)
    INVALID = 2


@dataclass
class _Slot:
    height: int
    pp_view: int = -1
    pp_digest: bytes = b""
    pp_state: _PP = _PP.PENDING
    blocks: dict[bytes, bytes] = field(default_factory=dict)
    # (view, digest, parent) -> {sender: signature}
    prepares: dict[tuple[int, bytes, bytes], dict[bytes, bytes]] = field(default_factory=dict)
    commits: dict[tuple[int, bytes], dict[bytes, bytes]] = field(default_factory=dict)
    # (kind, view, sender) -> (digest, encoded envelope): equivocation detection
    seen: dict[tuple[str, int, bytes], tuple[bytes, bytes]] = field(default_factory=dict)
    per_sender: dict[bytes, int] = field(default_factory=dict)
    sent_prepare_view: int = -1
    sent_commit_view: int = -1
    prepared: PreparedProof | None = None
    decided: tuple[bytes, CommitCertificate] | None = None

    def has_pp(self, view: int) -> bool:
        return self.pp_view == view

    def pp_block(self) -> bytes:
        return self.blocks[self.pp_digest]

    def has_pp_block(self) -> bool:
        """False for a NEW-VIEW re-proposal whose block has not arrived yet."""
        return self.pp_digest in self.blocks


@dataclass(frozen=True, slots=True)
class _StRequest:
    """A STATE-REQUEST in flight: heights ``lo..hi`` asked of ``peer``."""

    peer: bytes
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class _Fetched:
    """A state-transfer block whose certificate verified, waiting for its height."""

    block: bytes
    certificate: CommitCertificate
    parent: bytes | None


#: "No upper bound" for a probing state transfer (heights fit in 63 bits).
_NO_LIMIT = 1 << 63


def _own_key(payload: Payload) -> tuple[str, int, int] | None:
    """The slot an own message occupies; two different messages there would equivocate."""
    if isinstance(payload, PrePrepare):
        return ("pp", payload.view, payload.height)
    if isinstance(payload, Prepare):
        return ("p", payload.view, payload.height)
    if isinstance(payload, Commit):
        return ("c", payload.view, payload.height)
    if isinstance(payload, Checkpoint):
        return ("cp", 0, payload.height)
    if isinstance(payload, ViewChange):
        return ("vc", payload.new_view, 0)
    if isinstance(payload, NewView):
        return ("nv", payload.view, 0)
    return None


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW implies: a final base and the chain re-proposed above it."""

    checkpoint: CheckpointProof
    base_height: int  # everything up to here is final (checkpoint or commit certificate)
    base_digest: bytes
    chain: list[PreparedCert]


def compute_new_view(vcs: Sequence[ViewChange]) -> NewViewPlan:
    """The base and re-proposals a NEW-VIEW built from ``vcs`` implies.

    Pure and deterministic, so the primary and every replica agree. ``vcs``
    must already be verified. The base is the highest stable checkpoint or
    commit certificate among them: a certificate is final, so no block at or
    below it can be re-proposed. Per height above the base, the prepared proof
    of the highest view wins (ties, possible only with more than f faulty
    validators, break by digest); the chain is cut at the first height with no
    proof or whose proof does not extend the previous one. The parent a proof
    names is attested by its quorum of PREPAREs (honest replicas check it), so
    no block is needed to find the cut.

    Safety: a block committed at height h was prepared by f + 1 honest
    replicas, and any quorum of view changes includes one of them; that one
    either still lists the proof or has committed h or above, in which case
    its certificate puts the base at or above h.
    """
    cp = max((vc.checkpoint for vc in vcs), key=lambda c: (c.height, c.block_digest))
    base_h, base_d = cp.height, cp.block_digest
    for vc in vcs:
        c = vc.committed
        if c is not None and (c.height, c.digest) > (base_h, base_d):
            base_h, base_d = c.height, c.digest
    best: dict[int, PreparedCert] = {}
    for vc in vcs:
        for p in vc.prepared:
            if p.height <= base_h:
                continue
            cur = best.get(p.height)
            if cur is None or (p.view, cur.digest) > (cur.view, p.digest):
                best[p.height] = p
    chain: list[PreparedCert] = []
    parent = base_d
    h = base_h + 1
    while h in best and best[h].parent == parent:
        chain.append(best[h])
        parent = best[h].digest
        h += 1
    return NewViewPlan(cp, base_h, base_d, chain)


class Replica:
    """One validator's PBFT state machine. See the module docstring."""

    def __init__(
        self,
        config: ConsensusConfig,
        key: KeyPair,
        validators: ValidatorSet,
        app: Application,
        *,
        genesis_digest: bytes,
        committed_height: int = 0,
        committed_digest: bytes | None = None,
        wal_records: Iterable[WalRecord] = (),
    ) -> None:
        if key.public_key not in validators:
            raise LocalProtocolError("this node's key is not in the validator set")
        self.config = config
        self._key = key
        self.id = key.public_key
        self.vs = validators
        self.app = app
        self._L = config.effective_log_window
        self.genesis = CheckpointProof(0, genesis_digest, GENESIS_STATE_DIGEST, [])
        self.view = 0
        self.in_view_change = False
        self.vc_target = 0
        self.committed = committed_height
        self._committed_digests: dict[int, bytes] = {
            committed_height: committed_digest if committed_digest is not None else genesis_digest
        }
        self.stable = self.genesis
        self._executed = committed_height
        self._unexecuted: dict[int, bytes] = {}  # committed, CommitBlock not yet executed
        self._slots: dict[int, _Slot] = {}
        self._cp_votes: dict[int, dict[tuple[bytes, bytes], dict[bytes, bytes]]] = {}
        self._cp_sender_heights: dict[bytes, list[int]] = {}
        self._own: dict[tuple[str, int, int], Envelope] = {}
        self._vc_store: dict[bytes, dict[int, SignedViewChange]] = {}
        self._nv_env: Envelope | None = None  # NEW-VIEW of the current view (any sender)
        self._chain_end = 0  # highest height re-proposed by the current view's NEW-VIEW
        # The current view's NEW-VIEW base: final, like a stable checkpoint.
        self._nv_base: tuple[int, bytes] = (0, genesis_digest)
        self._last_cert: CommitCertificate | None = None  # of height self.committed
        self._consecutive_vc = 0
        self._vc_timer_for = -1
        self._timer_tokens: dict[TimerKind, int] = {}
        self._timer_seq = 0
        self._progress_armed = False
        self._last_tick_committed = -1
        self._quiet_ticks = 0
        self._status_replied: set[bytes] = set()
        self._nv_replied: set[bytes] = set()
        self._view_replied: set[bytes] = set()  # peers told our view this tick
        # The view each peer last reported in a STATUS: with the VIEW-CHANGEs,
        # how a replica left in an older view learns that f + 1 moved on.
        # One entry per validator (only validators get past check_envelope).
        self._peer_views: dict[bytes, int] = {}
        self._higher_view_seen = False  # a vote of a view above ours came in this tick
        self._last_tick_transferred = 0  # state_blocks_received at the last tick
        self._transfer_ticks = 0  # ticks whose progress all came by state transfer
        self._requests_served: dict[bytes, tuple[int, int]] = {}  # (requests, bytes) this tick
        self._st_target = 0  # a height the network is known to have committed
        self._st_probe = False  # peers may have more than _st_target: ask until an empty answer
        self._st_limit = _NO_LIMIT  # while probing: a peer answered nothing above this
        self._st_requests: list[_StRequest] = []  # in flight, at most state_pipeline
        self._st_buffer: dict[int, _Fetched] = {}  # verified, above the next height
        self._st_buffer_bytes = 0
        self._st_rotation = 0
        self._st_attempts = 0  # failed requests since the last progress
        self._offer_ticks = 0  # resend ticks since this view change's first BlockOffers
        self._offer_target = -1  # the view change those ticks count for
        self._primary_heard = False  # the target primary's VIEW-CHANGE came in since
        self._effects: list[Effect] = []
        self._c = _Counters()
        self._replaying = False
        self._restore(list(wal_records))

    # ================================================================ public inputs

    def start(self) -> list[Effect]:
        """Arm timers and announce ourselves; call once after construction."""
        self._start_timer(TimerKind.RESEND, self.config.resend_interval_ms)
        self._send_status()
        if self.in_view_change:
            own = self._own.get(("vc", self.vc_target, 0))
            if own is not None:
                self._broadcast_env(own)
                self._offer_blocks()
            self._check_vc_quorum()
        else:
            self._resend_own()
        self._step()
        self._arm_progress()
        return self._take()

    def receive(self, data: bytes) -> list[Effect]:
        """Handle one message from the network (bytes of an :class:`Envelope`)."""
        try:
            env = decode_envelope(data, self.config.max_message_size)
        except RemoteProtocolError:
            self._c.malformed += 1
            return self._take()
        kind = payload_kind(env.payload)
        self._c.messages_in[kind] = self._c.messages_in.get(kind, 0) + 1
        if env.sender == self.id:
            return self._take()
        try:
            self.vs.check_envelope(env)
            self._dispatch(env, data)
        except NotAValidatorError:
            self._c.non_validator += 1
        except BadConsensusSignatureError:
            self._c.invalid_signatures += 1
        except RemoteProtocolError:
            self._c.invalid_messages += 1
        return self._take()

    def timeout(self, kind: TimerKind, token: int) -> list[Effect]:
        if self._timer_tokens.get(kind) != token:
            return self._take()  # stale: the timer was restarted or cancelled since
        del self._timer_tokens[kind]
        if kind is TimerKind.PROGRESS:
            self._progress_armed = False
            if not self.in_view_change and self._has_work():
                self._consecutive_vc += 1
                self._start_view_change(self.view + 1)
            else:
                self._arm_progress()
        elif kind is TimerKind.VIEW_CHANGE:
            if self.in_view_change:
                self._consecutive_vc += 1
                self._start_view_change(self.vc_target + 1)
        elif kind is TimerKind.RESEND:
            self._on_tick()
        elif kind is TimerKind.STATE:
            # Nothing useful came back in time: give up on what is in flight
            # (a late answer is still used, as an unsolicited one) and ask the
            # next peer.
            self._st_requests.clear()
            self._st_rotation += 1
            self._st_attempts += 1
            self._request_state()
        return self._take()

    def notify_pending(self) -> list[Effect]:
        """The application has new work (txs in the mempool)."""
        self._step()
        self._arm_progress()
        return self._take()

    def executed(self, height: int, state_digest: bytes) -> list[Effect]:
        """The application executed ``height`` (after a :class:`CommitBlock`).

        The driver must call this right after executing each block, before any
        other input: the core describes the application's state to it as
        "executed height + the ancestors listed", so the two must not drift.
        """
        if height > self._executed:
            for h in range(self._executed + 1, height + 1):
                self._unexecuted.pop(h, None)
            self._executed = height
        k = self.config.checkpoint_interval
        recent = height > max(self.stable.height, self.committed - self._L)
        if height % k == 0 and recent and height in self._committed_digests:
            cp = Checkpoint(height, self._committed_digests[height], state_digest)
            env = self._cast(cp)
            if env is not None:
                self._add_checkpoint_vote(self.id, cp, env.signature)
        return self._take()

    def statistics(self) -> ReplicaStatistics:
        c = self._c
        return ReplicaStatistics(
            view=self.view,
            in_view_change=self.in_view_change,
            committed_height=self.committed,
            stable_checkpoint=self.stable.height,
            view_changes=c.view_changes,
            messages_in=tuple(sorted(c.messages_in.items())),
            messages_out=tuple(sorted(c.messages_out.items())),
            malformed=c.malformed,
            invalid_signatures=c.invalid_signatures,
            non_validator=c.non_validator,
            invalid_messages=c.invalid_messages,
            invalid_proposals=c.invalid_proposals,
            equivocations=c.equivocations,
            dropped_out_of_window=c.dropped_out_of_window,
            dropped_over_cap=c.dropped_over_cap,
            double_sign_refused=c.double_sign_refused,
            forged_certificates=c.forged_certificates,
            state_requests_sent=c.state_requests_sent,
            state_blocks_received=c.state_blocks_received,
            state_target=self._st_target,
        )

    @property
    def is_primary(self) -> bool:
        return self.vs.primary(self.view) == self.id

    def buffered_heights(self) -> int:
        """How many heights hold state (for memory-bound tests)."""
        return len(self._slots) + len(self._cp_votes)

    # ================================================================ plumbing

    def _take(self) -> list[Effect]:
        out, self._effects = self._effects, []
        if self._replaying:
            return []
        return out

    def _emit(self, effect: Effect) -> None:
        if not self._replaying:
            self._effects.append(effect)

    def _start_timer(self, kind: TimerKind, duration: int) -> None:
        self._timer_seq += 1
        token = self._timer_seq  # never reused, so a stale expiry can never match
        self._timer_tokens[kind] = token
        self._emit(StartTimer(kind, token, duration))

    def _cancel_timer(self, kind: TimerKind) -> None:
        if kind in self._timer_tokens:
            del self._timer_tokens[kind]
            self._emit(CancelTimer(kind))

    def _count_out(self, kind: str) -> None:
        self._c.messages_out[kind] = self._c.messages_out.get(kind, 0) + 1

    def _broadcast_env(self, env: Envelope) -> None:
        kind = payload_kind(env.payload)
        self._count_out(kind)
        self._emit(Broadcast(encode_envelope(env), kind))

    def _send_env(self, peer: bytes, env: Envelope) -> None:
        kind = payload_kind(env.payload)
        self._count_out(kind)
        self._emit(SendTo(peer, encode_envelope(env), kind))

    def _sign_own(self, payload: Payload) -> Envelope | None:
        """Sign ``payload`` unless that would conflict with an own message in the WAL.

        An identical earlier message is returned as is (re-send, not re-sign);
        a conflicting one is refused and counted: never equivocate.
        """
        key = _own_key(payload)
        if key is not None:
            prior = self._own.get(key)
            if prior is not None:
                if prior.payload == payload:
                    return prior
                self._c.double_sign_refused += 1
                return None
        env = sign(self._key, self.vs.chain_id, payload)
        if key is not None:
            self._own[key] = env
            self._emit(Persist(WalVote(encode_envelope(env))))
        return env

    def _cast(self, payload: Payload) -> Envelope | None:
        env = self._sign_own(payload)
        if env is not None:
            self._broadcast_env(env)
        return env

    # ================================================================ dispatch

    def _dispatch(self, env: Envelope, data: bytes) -> None:
        p = env.payload
        if isinstance(p, PrePrepare | Prepare | Commit) and p.view > (
            self.vc_target if self.in_view_change else self.view
        ):
            # Peers vote in a view we are not in: we may have missed its
            # NEW-VIEW. Only a hint (one validator can fake it): the next tick
            # sends a STATUS, and peers in that view answer with theirs.
            self._higher_view_seen = True
        if isinstance(p, PrePrepare):
            self._on_preprepare(env, p, data)
        elif isinstance(p, Prepare):
            self._on_prepare(env, p, data)
        elif isinstance(p, Commit):
            self._on_commit(env, p, data)
        elif isinstance(p, Checkpoint):
            self._on_checkpoint(env, p, data)
        elif isinstance(p, ViewChange):
            self._on_view_change(env, p)
        elif isinstance(p, NewView):
            self._on_new_view(env, p)
        elif isinstance(p, StateRequest):
            self._on_state_request(env, p)
        elif isinstance(p, StateResponse):
            self._on_state_response(env, p)
        elif isinstance(p, Status):
            self._on_status(env, p)
        elif isinstance(p, BlockOffer):
            self._on_block_offer(env, p)

    def _base(self) -> int:
        return max(self.stable.height, self.committed)

    def _floor(self) -> tuple[int, bytes]:
        """The highest height known final without holding its block: stable or NEW-VIEW base."""
        if self._nv_base[0] > self.stable.height:
            return self._nv_base
        return (self.stable.height, self.stable.block_digest)

    def _in_window(self, height: int) -> bool:
        if self.committed < height <= self._base() + self._L:
            return True
        if height > self.committed:  # late votes for committed heights are normal
            self._c.dropped_out_of_window += 1
        return False

    def _slot(self, height: int) -> _Slot:
        s = self._slots.get(height)
        if s is None:
            s = self._slots[height] = _Slot(height)
        return s

    def _note_vote(self, slot: _Slot, kind: str, view: int, sender: bytes, digest: bytes,
                   data: bytes) -> bool:
        """Record that ``sender`` voted; False if duplicate, equivocation or over cap."""
        key = (kind, view, sender)
        prior = slot.seen.get(key)
        if prior is not None:
            if prior[0] != digest:
                self._c.equivocations += 1
                self._emit(Evidence(sender, kind, prior[1], data))
            return False
        n = slot.per_sender.get(sender, 0)
        if n >= self.config.max_votes_per_sender_slot:
            self._c.dropped_over_cap += 1
            return False
        slot.per_sender[sender] = n + 1
        slot.seen[key] = (digest, data)
        return True

    # ================================================================ normal case

    def _on_preprepare(self, env: Envelope, pp: PrePrepare, data: bytes) -> None:
        if env.sender != self.vs.primary(pp.view):
            raise RemoteProtocolError("pre-prepare from a replica that is not primary")
        if self.in_view_change or pp.view != self.view:
            self._c.dropped_out_of_window += 1
            return
        if not self._in_window(pp.height):
            return
        slot = self._slot(pp.height)
        if not self._note_vote(slot, "pp", pp.view, env.sender, pp.digest, data):
            return
        if slot.has_pp(pp.view) and slot.pp_digest == pp.digest and not slot.has_pp_block():
            # The block of a NEW-VIEW re-proposal, from the new primary.
            if self.app.digest_of(pp.block) != pp.digest:
                self._c.invalid_proposals += 1
                raise RemoteProtocolError("pre-prepare digest does not match its block")
            if len(slot.blocks) >= 4:
                slot.blocks.pop(next(iter(slot.blocks)))
            slot.blocks[pp.digest] = pp.block
            self._check_decided(slot)
            self._step()
            return
        if slot.has_pp(pp.view) or pp.height <= self._chain_end:
            return  # NEW-VIEW already fixed this height in this view
        if self.app.digest_of(pp.block) != pp.digest:
            self._c.invalid_proposals += 1
            raise RemoteProtocolError("pre-prepare digest does not match its block")
        if len(slot.blocks) < 4:
            slot.blocks[pp.digest] = pp.block
        if pp.digest not in slot.blocks:
            self._c.dropped_over_cap += 1
            return
        slot.pp_view, slot.pp_digest, slot.pp_state = pp.view, pp.digest, _PP.PENDING
        self._check_decided(slot)
        self._step()
        self._arm_progress()

    def _on_prepare(self, env: Envelope, p: Prepare, data: bytes) -> None:
        if p.view < self.view or not self._in_window(p.height):
            self._c.dropped_out_of_window += int(p.view < self.view)
            return
        slot = self._slot(p.height)
        if not self._note_vote(slot, "p", p.view, env.sender, p.digest + p.parent, data):
            return
        votes = slot.prepares.setdefault((p.view, p.digest, p.parent), {})
        votes[env.sender] = env.signature
        if p.view == self.view and len(votes) >= self.vs.quorum:
            self._step()

    def _on_commit(self, env: Envelope, c: Commit, data: bytes) -> None:
        if not self._in_window(c.height):
            return
        slot = self._slot(c.height)
        if not self._note_vote(slot, "c", c.view, env.sender, c.digest, data):
            return
        votes = slot.commits.setdefault((c.view, c.digest), {})
        votes[env.sender] = env.signature
        if len(votes) >= self.vs.quorum:
            self._check_decided(slot)

    def _step(self) -> None:
        self._advance()
        if self._propose():
            self._advance()

    def _advance(self) -> None:
        """Validate, PREPARE and COMMIT every height that can move, in height order."""
        if self.in_view_change:
            return
        view = self.view
        start_committed = self.committed
        ancestors = self._executed_gap()
        parent = self._committed_digests[self.committed]
        parent_ok_for_app = True  # ancestors known back to the committed height
        h = self.committed + 1
        floor_h, floor_d = self._floor()
        if floor_h > self.committed:
            # Behind a stable checkpoint or NEW-VIEW base: only certified
            # re-proposals above it can move until state transfer catches up.
            h = floor_h + 1
            parent = floor_d
            parent_ok_for_app = False
        prev_prepared_ok = True  # h-1 committed/stable: the prepare rule holds
        while True:
            slot = self._slots.get(h)
            if slot is None or not slot.has_pp(view) or slot.pp_state is _PP.INVALID:
                return
            if not slot.has_pp_block():
                return  # a re-proposal whose block the new primary has yet to send
            block = slot.pp_block()
            if slot.pp_state is _PP.PENDING:
                if self.app.parent_of(block) != parent:
                    slot.pp_state = _PP.INVALID
                    self._c.invalid_proposals += 1
                    return
                if not parent_ok_for_app:
                    return
                verdict = self.app.validate(h, parent, block, ancestors)
                if verdict.kind is VerdictKind.NOT_YET:
                    return
                if verdict.kind is VerdictKind.INVALID:
                    slot.pp_state = _PP.INVALID
                    self._c.invalid_proposals += 1
                    return
                slot.pp_state = _PP.OK
            elif self.app.parent_of(block) != parent:
                return  # a certified block not on our chain: wait (state transfer)
            d = slot.pp_digest
            if prev_prepared_ok and slot.sent_prepare_view != view:
                env = self._cast(Prepare(view, h, d, parent))
                slot.sent_prepare_view = view
                if env is not None:
                    slot.prepares.setdefault((view, d, parent), {})[self.id] = env.signature
            votes = slot.prepares.get((view, d, parent), {})
            prepared_here = (
                slot.sent_prepare_view == view
                and self.id in votes
                and len(votes) >= self.vs.quorum
            )
            if prepared_here and slot.sent_commit_view != view:
                proof = PreparedProof(
                    view, h, d, parent, block, sorted_sigs(self.vs, votes, self.vs.quorum)
                )
                if slot.prepared is None or slot.prepared.view < view:
                    slot.prepared = proof
                    self._emit(Persist(WalPrepared(proof)))
                env = self._cast(Commit(view, h, d))
                slot.sent_commit_view = view
                if env is not None:
                    slot.commits.setdefault((view, d), {})[self.id] = env.signature
                self._check_decided(slot)
                if self.committed != start_committed:
                    return  # executing re-entered _advance, which finished the pass
            prev_prepared_ok = prepared_here
            ancestors.append(block)
            parent = d
            h += 1

    def _executed_gap(self) -> list[bytes]:
        """Blocks committed here but not yet executed by the application, in order."""
        return [self._unexecuted[h] for h in range(self._executed + 1, self.committed + 1)]

    def _check_decided(self, slot: _Slot) -> None:
        if slot.decided is not None or self._replaying:
            return
        for (view, digest), votes in slot.commits.items():
            if len(votes) >= self.vs.quorum and digest in slot.blocks:
                cert = CommitCertificate(
                    slot.height, view, digest, sorted_sigs(self.vs, votes, self.vs.quorum)
                )
                slot.decided = (digest, cert)
                self._execute()
                return

    def _execute(self) -> None:
        progressed = False
        while True:
            h = self.committed + 1
            slot = self._slots.get(h)
            if slot is None or slot.decided is None:
                break
            digest, cert = slot.decided
            block = slot.blocks[digest]
            self._commit_block(h, block, digest, cert)
            progressed = True
        if progressed:
            self._on_progress()

    def _commit_block(self, h: int, block: bytes, digest: bytes, cert: CommitCertificate) -> None:
        if self.app.parent_of(block) != self._committed_digests[self.committed]:
            raise SafetyViolationError(f"block at height {h} does not extend the committed chain")
        self._emit(CommitBlock(h, block, digest, cert))
        if not self._replaying:
            self._unexecuted[h] = block
        self._committed_digests[h] = digest
        self.committed = h
        self._last_cert = cert

    def _on_progress(self) -> None:
        self._consecutive_vc = 0
        self._st_attempts = 0
        self._progress_armed = False
        self._cancel_timer(TimerKind.PROGRESS)
        keep_from = self.committed - self.config.state_batch - self._L
        for h in [h for h in self._committed_digests if h < keep_from]:
            if h != self.stable.height:
                del self._committed_digests[h]
        self._step()
        self._arm_progress()
        self._request_state()

    def _has_work(self) -> bool:
        if any(h > self.committed and s.pp_view == self.view for h, s in self._slots.items()):
            return True
        return self.app.has_pending()

    def _arm_progress(self) -> None:
        if self.in_view_change or self._progress_armed or not self._has_work():
            return
        self._progress_armed = True
        self._start_timer(
            TimerKind.PROGRESS,
            self._backoff(self.config.progress_timeout_ms, self._consecutive_vc),
        )

    def _backoff(self, base: int, doublings: int) -> int:
        return min(base << min(max(doublings, 0), 20), self.config.max_timeout_ms)

    def _propose(self) -> bool:
        """As primary, fill the pipeline window with new blocks; True if any was proposed."""
        if self.in_view_change or not self.is_primary or self._floor()[0] > self.committed:
            return False
        view = self.view
        ancestors = self._executed_gap()
        parent = self._committed_digests[self.committed]
        h = self.committed + 1
        while (s := self._slots.get(h)) is not None and s.has_pp(view):
            if s.pp_state is not _PP.OK or not s.has_pp_block():
                return False
            ancestors.append(s.pp_block())
            parent = s.pp_digest
            h += 1
        proposed = False
        limit = min(self.committed + self.config.window, self._base() + self._L)
        while h <= limit:
            prior = self._own.get(("pp", view, h))
            if prior is not None and isinstance(prior.payload, PrePrepare):
                block = prior.payload.block
            else:
                maybe = self.app.propose(h, parent, ancestors)
                if maybe is None:
                    break
                block = maybe
            digest = self.app.digest_of(block)
            if digest is None:
                raise LocalProtocolError("the application proposed an undecodable block")
            env = self._cast(PrePrepare(view, h, digest, block))
            if env is None:
                break
            slot = self._slot(h)
            slot.blocks[digest] = block
            slot.pp_view, slot.pp_digest, slot.pp_state = view, digest, _PP.OK
            slot.seen[("pp", view, self.id)] = (digest, encode_envelope(env))
            proposed = True
            ancestors.append(block)
            parent = digest
            h += 1
        if proposed:
            self._arm_progress()
        return proposed

    # ================================================================ checkpoints

    def _on_checkpoint(self, env: Envelope, cp: Checkpoint, data: bytes) -> None:
        if cp.height <= self.stable.height:
            return
        if cp.height % self.config.checkpoint_interval != 0:
            raise RemoteProtocolError("checkpoint at a height that is not a checkpoint height")
        heights = self._cp_sender_heights.setdefault(env.sender, [])
        if cp.height not in heights:
            if len(heights) >= self.config.max_votes_per_sender_slot:
                # keep the highest: a sender's newest checkpoints are the useful ones
                low = min(heights)
                if cp.height < low:
                    self._c.dropped_over_cap += 1
                    return
                heights.remove(low)
                self._forget_cp_vote(env.sender, low)
            heights.append(cp.height)
        for key, votes in self._cp_votes.get(cp.height, {}).items():
            if env.sender in votes and key != (cp.block_digest, cp.state_digest):
                first = Envelope(env.sender, Checkpoint(cp.height, *key), votes[env.sender])
                self._c.equivocations += 1
                self._emit(Evidence(env.sender, "Checkpoint", encode_envelope(first), data))
                return
        self._add_checkpoint_vote(env.sender, cp, env.signature)

    def _forget_cp_vote(self, sender: bytes, height: int) -> None:
        for votes in self._cp_votes.get(height, {}).values():
            votes.pop(sender, None)

    def _add_checkpoint_vote(self, sender: bytes, cp: Checkpoint, sig: bytes) -> None:
        votes = self._cp_votes.setdefault(cp.height, {}).setdefault(
            (cp.block_digest, cp.state_digest), {}
        )
        votes[sender] = sig
        if len(votes) >= self.vs.quorum:
            proof = CheckpointProof(
                cp.height, cp.block_digest, cp.state_digest,
                sorted_sigs(self.vs, votes, self.vs.quorum),
            )
            self._set_stable(proof)
        elif len(votes) >= self.vs.weak_quorum and cp.height > self.committed:
            self._note_lag(cp.height)

    def _set_stable(self, proof: CheckpointProof) -> None:
        if proof.height <= self.stable.height:
            return
        mine = self._committed_digests.get(proof.height)
        if mine is not None and mine != proof.block_digest:
            raise SafetyViolationError(f"stable checkpoint {proof.height} conflicts with our chain")
        self.stable = proof
        s = proof.height
        for h in [h for h in self._slots if h <= s]:
            del self._slots[h]
        for h in [h for h in self._cp_votes if h <= s]:
            del self._cp_votes[h]
        for heights in self._cp_sender_heights.values():
            heights[:] = [h for h in heights if h > s]
        for k in [k for k in self._own if k[0] in ("pp", "p", "c", "cp") and k[2] <= s]:
            del self._own[k]
        if self._chain_end < s:
            self._chain_end = s
        if s > self.committed:
            self._note_lag(s)
        self._emit(RewriteWAL(tuple(self._live_wal_records())))

    def _live_wal_records(self) -> list[WalRecord]:
        out: list[WalRecord] = [WalStable(self.stable)]
        for h in sorted(self._slots):
            p = self._slots[h].prepared
            if p is not None:
                out.append(WalPrepared(p))
        latest_vc = max((k[1] for k in self._own if k[0] == "vc"), default=-1)
        latest_nv = max((k[1] for k in self._own if k[0] == "nv"), default=-1)
        for k, env in self._own.items():
            if (k[0] == "vc" and k[1] != latest_vc) or (k[0] == "nv" and k[1] != latest_nv):
                continue
            out.append(WalVote(encode_envelope(env)))
        if self._nv_env is not None and self._nv_env.sender != self.id:
            out.append(WalVote(encode_envelope(self._nv_env)))
        return out

    # ================================================================ view change

    def _verify_view_change(self, vc: ViewChange) -> None:
        self.vs.check_checkpoint(vc.checkpoint, self.genesis)
        if vc.committed is not None:
            self.vs.check_certificate(vc.committed)
        for p in vc.prepared:
            self.vs.check_prepared(p)

    def _on_view_change(self, env: Envelope, vc: ViewChange) -> None:
        current = self.vc_target if self.in_view_change else self.view
        if vc.new_view <= self.view and not self.in_view_change:
            if (vc.new_view == self.view and self._nv_env is not None
                    and self._nv_env.sender == self.id and env.sender not in self._nv_replied):
                self._nv_replied.add(env.sender)
                self._send_env(env.sender, self._nv_env)  # it missed our NEW-VIEW
            return
        if vc.new_view < current:
            return
        store = self._vc_store.setdefault(env.sender, {})
        svc = SignedViewChange(env.sender, vc, env.signature)
        if self.in_view_change and vc.new_view == self.vc_target == self._offer_target and (
            env.sender == self.vs.primary(vc.new_view)
        ):
            self._primary_heard = True  # it is alive and still collecting: see _offer_blocks
        prior = store.get(vc.new_view)
        if prior is not None:
            if prior != svc:
                self._c.equivocations += 1
                self._emit(Evidence(env.sender, "ViewChange",
                                    codec.encode(prior), codec.encode(svc)))
            return
        self._verify_view_change(vc)
        if len(store) >= self.config.max_view_changes_per_sender:
            lowest = min(store)
            if vc.new_view < lowest:
                self._c.dropped_over_cap += 1
                return
            del store[lowest]
        store[vc.new_view] = svc
        if vc.checkpoint.height > self.stable.height:
            self._set_stable(vc.checkpoint)
        self._check_join()
        self._check_vc_quorum()

    def _check_join(self) -> None:
        """Join a higher view once f + 1 validators claim one: an honest one is there.

        A validator claims view ``v`` by a VIEW-CHANGE for ``v`` or by a STATUS
        reporting ``v`` (its view, or its view-change target); each counts
        once, with its highest claim, so f Byzantine validators cannot move
        us. We join the (f + 1)-th highest claim: at least one honest replica
        is in that view or beyond (or wants it), and sending a VIEW-CHANGE only
        ends our part in the current view. Status claims are what repair a
        replica that missed a view's VIEW-CHANGEs and NEW-VIEW: once in the
        new view the others send no more VIEW-CHANGEs, but they keep
        answering our STATUS with theirs (:meth:`_on_status`), and the new
        primary answers our VIEW-CHANGE with its NEW-VIEW.
        """
        current = self.vc_target if self.in_view_change else self.view
        claims = {s: max(views) for s, views in self._vc_store.items() if views}
        for sender, view in self._peer_views.items():
            if view > claims.get(sender, -1):
                claims[sender] = view
        highest = sorted((v for v in claims.values() if v > current), reverse=True)
        if len(highest) >= self.vs.weak_quorum:
            self._start_view_change(highest[self.vs.f])

    def _start_view_change(self, target: int) -> None:
        current = self.vc_target if self.in_view_change else self.view
        if target <= current and self.in_view_change:
            return
        if target <= self.view:
            return
        self.in_view_change = True
        self.vc_target = target
        self._c.view_changes += 1
        self._progress_armed = False
        self._cancel_timer(TimerKind.PROGRESS)
        self._cancel_timer(TimerKind.VIEW_CHANGE)
        self._vc_timer_for = -1
        cert = self._committed_cert()
        above = max(self.stable.height, cert.height if cert is not None else 0)
        prepared = [s.prepared.cert() for _, s in sorted(self._slots.items())
                    if s.prepared is not None and s.prepared.height > above]
        env = self._cast(ViewChange(target, self.stable, cert, prepared))
        if env is not None and isinstance(env.payload, ViewChange):
            self._vc_store.setdefault(self.id, {})[target] = SignedViewChange(
                self.id, env.payload, env.signature
            )
        self._offer_blocks()
        self._check_vc_quorum()

    def _committed_cert(self) -> CommitCertificate | None:
        """The certificate of our committed height, if above the stable checkpoint."""
        if self.committed <= self.stable.height:
            return None
        cert = self._last_cert
        if cert is None or cert.height != self.committed:
            got = self.app.committed_block(self.committed)  # after a restart
            if got is None:
                return None
            try:
                cert = codec.decode(got[1], CommitCertificate)
            except LedgerError:
                return None
            self._last_cert = cert
        return cert if cert.digest == self._committed_digests.get(self.committed) else None

    def _offer_blocks(self, *, resend: bool = False) -> None:
        """Send the new primary the blocks our VIEW-CHANGE names (it may lack them).

        Each is a whole block, so they go once when the view change starts
        (or after a restart) and then only on resend ticks 2, 4, 8, ... of
        this view change, and only while the new primary is heard from (its
        VIEW-CHANGE for the target came in since the last offer): a lost offer
        is made good within a second, a dead or slow primary is not flooded,
        and a long view change costs O(log ticks) offers instead of one per
        tick. A block its own VIEW-CHANGE shows prepared is not re-sent: it
        holds it. The backoff restarts when a quorum of view changes forms
        (the primary then needs the blocks to send NEW-VIEW).
        """
        primary = self.vs.primary(self.vc_target)
        own = self._own.get(("vc", self.vc_target, 0))
        if primary == self.id or own is None or not isinstance(own.payload, ViewChange):
            return
        if self._offer_target != self.vc_target:
            self._offer_target, self._offer_ticks = self.vc_target, 0
        held: set[tuple[int, bytes]] = set()
        if resend:
            self._offer_ticks += 1
            t = self._offer_ticks
            if t < 2 or t & (t - 1) or not self._primary_heard:
                return
            theirs = self._vc_store.get(primary, {}).get(self.vc_target)
            if theirs is not None:
                held = {(p.height, p.digest) for p in theirs.view_change.prepared}
        self._primary_heard = False
        for p in own.payload.prepared:
            if (p.height, p.digest) in held:
                continue
            slot = self._slots.get(p.height)
            block = slot.blocks.get(p.digest) if slot is not None else None
            if block is not None:
                offer = BlockOffer(self.vc_target, p.height, block)
                self._send_env(primary, sign(self._key, self.vs.chain_id, offer))

    def _on_block_offer(self, env: Envelope, offer: BlockOffer) -> None:
        if (not self.in_view_change or offer.new_view != self.vc_target
                or self.vs.primary(offer.new_view) != self.id):
            self._c.dropped_out_of_window += 1
            return
        if not self._in_window(offer.height):
            return
        digest = self.app.digest_of(offer.block)
        if digest is None:
            raise RemoteProtocolError("offered block is undecodable")
        slot = self._slot(offer.height)
        if digest not in slot.blocks:
            if len(slot.blocks) >= 4:
                self._c.dropped_over_cap += 1
                return
            slot.blocks[digest] = offer.block
            self._check_vc_quorum()

    def _check_vc_quorum(self) -> None:
        if not self.in_view_change:
            return
        t = self.vc_target
        senders = [s for s, views in self._vc_store.items() if t in views]
        if len(senders) < self.vs.quorum:
            return
        if self._vc_timer_for != t:
            self._vc_timer_for = t
            if self._offer_target == t:
                self._offer_ticks = 0  # the primary can act now: offer again soon
            self._start_timer(
                TimerKind.VIEW_CHANGE,
                self._backoff(self.config.view_change_timeout_ms, self._consecutive_vc - 1),
            )
        if self.vs.primary(t) == self.id and self.id in senders:
            chosen = sorted(senders, key=self.vs.index)[: self.vs.quorum]
            if self.id not in chosen:
                chosen = [self.id, *chosen[: self.vs.quorum - 1]]
            svcs = [self._vc_store[s][t] for s in sorted(chosen, key=self.vs.index)]
            plan = compute_new_view([svc.view_change for svc in svcs])
            if any(self._block_for(p.height, p.digest) is None for p in plan.chain):
                return  # wait for the BlockOffers of the view changes' senders
            env = self._cast(NewView(t, svcs))
            if env is not None and isinstance(env.payload, NewView):
                self._enter_view(env, env.payload)

    def _block_for(self, height: int, digest: bytes) -> bytes | None:
        slot = self._slots.get(height)
        if slot is not None and digest in slot.blocks:
            return slot.blocks[digest]
        if self._committed_digests.get(height) == digest:
            block = self._unexecuted.get(height)
            if block is not None:
                return block
            got = self.app.committed_block(height)
            if got is not None and self.app.digest_of(got[0]) == digest:
                return got[0]
        return None

    def _on_new_view(self, env: Envelope, nv: NewView) -> None:
        if env.sender != self.vs.primary(nv.view):
            raise RemoteProtocolError("new-view from a replica that is not that view's primary")
        if self.in_view_change:
            if nv.view < self.vc_target:
                return
        elif nv.view <= self.view:
            return
        senders: set[bytes] = set()
        for svc in nv.view_changes:
            if svc.sender in senders:
                raise InvalidProofError("duplicate view change in new-view")
            senders.add(svc.sender)
            self.vs.check_signed_view_change(svc)
            self._verify_view_change(svc.view_change)
        if len(senders) < self.vs.quorum:
            raise InvalidProofError("new-view without a quorum of view changes")
        self._emit(Persist(WalVote(encode_envelope(env))))
        self._enter_view(env, nv)

    def _enter_view(self, env: Envelope, nv: NewView) -> None:
        plan = compute_new_view([s.view_change for s in nv.view_changes])
        cp, chain = plan.checkpoint, plan.chain
        self.view = nv.view
        self.vc_target = nv.view
        self.in_view_change = False
        self._nv_env = env
        self._nv_replied.clear()
        self._cancel_timer(TimerKind.VIEW_CHANGE)
        self._vc_timer_for = -1
        for views in self._vc_store.values():
            for v in [v for v in views if v <= nv.view]:
                del views[v]
        for k in [k for k in self._own if k[0] in ("vc", "nv") and k[1] < nv.view]:
            del self._own[k]
        if cp.height > self.stable.height:
            self._set_stable(cp)
        base_h, base_d = plan.base_height, plan.base_digest
        if base_h <= self.committed:
            mine = self._committed_digests.get(base_h)
            if mine is not None and mine != base_d:
                raise SafetyViolationError(f"new-view base conflicts with our block at {base_h}")
        self._nv_base = (base_h, base_d)
        self._chain_end = max(base_h, chain[-1].height if chain else 0)
        for proof in chain:
            h = proof.height
            if h <= self.committed:
                if self._committed_digests.get(h, proof.digest) != proof.digest:
                    raise SafetyViolationError(f"new-view re-proposes another block at {h}")
                continue
            slot = self._slot(h)
            slot.pp_view, slot.pp_digest, slot.pp_state = nv.view, proof.digest, _PP.OK
        for slot in self._slots.values():
            self._forget_old_views(slot, nv.view)
        if self._replaying:
            return
        # Drop superseded view changes from the WAL: it stays bounded however
        # many views pass between two stable checkpoints.
        self._emit(RewriteWAL(tuple(self._live_wal_records())))
        if base_h > self.committed:
            self._note_lag(base_h)  # final blocks we lack: fetch them with certificates
        if env.sender == self.id:
            # The re-proposed blocks, one PRE-PREPARE each (we checked we hold them).
            for proof in chain:
                block = self._block_for(proof.height, proof.digest)
                if block is not None:
                    self._cast(PrePrepare(nv.view, proof.height, proof.digest, block))
        for proof in chain:
            s = self._slots.get(proof.height)
            if s is not None:
                self._check_decided(s)
        self._step()
        self._arm_progress()

    def _forget_old_views(self, slot: _Slot, view: int) -> None:
        """Drop a slot's votes (and unneeded blocks) from views before ``view``; free their cap.

        They can no longer prepare anything (what they prepared is in
        ``slot.prepared``), and a commit quorum from an old view, had it
        formed, would already have decided the slot. Kept, they used up each
        sender's per-slot vote cap: after eight views at one height no new
        PREPARE counted and no view could ever prepare the height again.
        """
        if slot.decided is not None:
            return
        slot.seen = {k: v for k, v in slot.seen.items() if k[1] >= view}
        slot.prepares = {k: v for k, v in slot.prepares.items() if k[0] >= view}
        slot.commits = {k: v for k, v in slot.commits.items() if k[0] >= view}
        counts: dict[bytes, int] = {}
        for _kind, _view, sender in slot.seen:
            counts[sender] = counts.get(sender, 0) + 1
        slot.per_sender = counts
        # Each view's primary may propose its own block here; only four fit.
        keep = {d for _v, d, _p in slot.prepares} | {d for _v, d in slot.commits}
        if slot.prepared is not None:
            keep.add(slot.prepared.digest)
        if slot.pp_view >= view:
            keep.add(slot.pp_digest)
        slot.blocks = {d: b for d, b in slot.blocks.items() if d in keep}

    # ================================================================ state transfer

    def _note_lag(self, height: int) -> None:
        """Certified evidence that the network committed ``height``: fetch up to it."""
        if height > self._st_target:
            self._st_target = height
            self._st_probe = False
            self._st_limit = _NO_LIMIT
        self._request_state()

    def _st_window(self) -> int:
        """Heights above the committed one that may be fetched but not yet executed.

        One batch is being executed while ``state_pipeline`` more are in
        flight: that is what keeps the peer busy while we execute, and it
        bounds this node's buffer whatever peers send.
        """
        return (self.config.state_pipeline + 1) * self.config.state_batch

    def _st_horizon(self) -> int:
        """The highest height worth asking for now."""
        top = self.committed + self._st_window()
        if self._st_probe:
            return min(top, self._st_limit)
        return min(top, self._st_target)

    def _st_next_range(self) -> tuple[int, int] | None:
        """The lowest range of heights neither fetched nor in flight, up to the horizon."""
        horizon = self._st_horizon()
        spans = sorted((r.lo, r.hi) for r in self._st_requests)
        h = self.committed + 1
        moved = True
        while moved:
            moved = False
            while h in self._st_buffer:
                h += 1
            for lo, hi in spans:
                if lo <= h <= hi:
                    h, moved = hi + 1, True
        if h > horizon:
            return None
        hi = min(horizon, h + self.config.state_batch - 1)
        for lo, _ in spans:
            if h < lo <= hi:
                hi = lo - 1
        for b in self._st_buffer:
            if h < b <= hi:
                hi = b - 1
        return h, hi

    def _st_peer(self) -> bytes | None:
        """The peer asked for blocks now (rotates on failures)."""
        peers = [v for v in self.vs.validators if v != self.id]
        return peers[self._st_rotation % len(peers)] if peers else None

    def _request_state(self) -> None:
        """Keep up to ``state_pipeline`` requests in flight, all to the current peer.

        One peer at a time: its answers show what it holds (an empty answer
        means it has nothing from that height), and a peer that does not
        answer in time or forges certificates is left for the next one.
        """
        if self._replaying or self._st_attempts >= 2 * self.vs.n:
            return  # nobody answers usefully; wait for new evidence (or a stalled tick)
        if self.committed >= self._st_target and not self._st_probe:
            return
        peer = self._st_peer()
        if peer is None:
            return
        while len(self._st_requests) < self.config.state_pipeline:
            wanted = self._st_next_range()
            if wanted is None:
                return
            lo, hi = wanted
            env = sign(self._key, self.vs.chain_id, StateRequest(lo, hi))
            self._c.state_requests_sent += 1
            if not self._st_requests:
                self._start_timer(TimerKind.STATE, self.config.state_request_timeout_ms)
            self._st_requests.append(_StRequest(peer, lo, hi))
            self._send_env(peer, env)

    def _on_state_request(self, env: Envelope, req: StateRequest) -> None:
        cap = self.config.max_state_requests_per_tick
        count, size = self._requests_served.get(env.sender, (0, 0))
        if count >= 4 * cap or size >= cap * (self.config.max_message_size // 2):
            self._c.dropped_over_cap += 1
            return
        hi = min(req.to_height, req.from_height + self.config.state_batch - 1, self.committed)
        sent = self._send_blocks(env.sender, req.from_height, hi)
        self._requests_served[env.sender] = (count + 1, size + sent)

    def _send_blocks(self, peer: bytes, lo: int, hi: int) -> int:
        """Answer with committed blocks from ``lo``: at most ``hi``, and within half a frame.

        The byte budget matters as much as the count: 64 full blocks do not fit
        in one network frame, and a response the transport refuses would leave
        the laggard asking forever. Returns the bytes of blocks and certificates sent.
        """
        blocks: list[CommittedBlock] = []
        budget = self.config.max_message_size // 2
        sent = 0
        for h in range(lo, hi + 1):
            got = self.app.committed_block(h)
            if got is None:
                break
            block, cert_bytes = got
            size = len(block) + len(cert_bytes)
            if blocks and sent + size > budget:
                break
            try:
                cert = codec.decode(cert_bytes, CommitCertificate)
            except LedgerError:
                raise LocalProtocolError(f"stored certificate at {h} is undecodable") from None
            blocks.append(CommittedBlock(block, cert))
            sent += size
        self._send_env(peer, sign(self._key, self.vs.chain_id, StateResponse(blocks)))
        return sent

    def _st_match(self, sender: bytes, resp: StateResponse) -> _StRequest | None:
        """The request in flight that ``resp`` answers (None: unsolicited or too late).

        A non-empty answer starts at the height asked for. An empty one is
        taken for the highest request to that peer: if the lower one is empty
        too, its own answer says so, while the opposite guess could end a
        transfer that the lower answer, still on its way, would continue.
        """
        mine = sorted((r for r in self._st_requests if r.peer == sender), key=lambda r: r.lo)
        if not mine:
            return None
        if resp.blocks:
            first = resp.blocks[0].certificate.height
            found = next((r for r in mine if r.lo == first), None)
        else:
            found = mine[-1]
        if found is not None:
            self._st_requests.remove(found)
        return found

    def _on_state_response(self, env: Envelope, resp: StateResponse) -> None:
        """Verify, buffer, ask for the next range, then commit what extends our chain.

        The next STATE-REQUEST is emitted before the CommitBlocks of this
        response: the driver performs effects in order, so the peer serves it
        while this node executes. A block waits in the buffer only after its
        certificate verified and its digest matched; it is committed at the
        next height only, after the parent check, once per height.
        """
        matched = self._st_match(env.sender, resp)
        bad = False
        added = 0
        top = self.committed + self._st_window()
        room = (self.config.state_pipeline + 1) * (self.config.max_message_size // 2)
        for cb in resp.blocks:
            cert = cb.certificate
            h = cert.height
            if h <= self.committed or h in self._st_buffer:
                continue
            if h > top or not self._st_make_room(h, len(cb.block), room):
                break  # beyond what we keep; asked for again later
            try:
                self.vs.check_certificate(cert)
            except InvalidProofError:
                self._c.forged_certificates += 1
                bad = True
                break
            if self.app.digest_of(cb.block) != cert.digest:
                self._c.forged_certificates += 1
                bad = True
                break
            self._st_buffer[h] = _Fetched(cb.block, cert, self.app.parent_of(cb.block))
            self._st_buffer_bytes += len(cb.block)
            added += 1
        if bad and (matched is not None or env.sender == self._st_peer()):
            # The peer we ask forges: leave it. (An unsolicited forgery is only
            # counted, or any validator could steer us away from honest peers.)
            self._st_requests = [r for r in self._st_requests if r.peer != env.sender]
            self._st_rotation += 1
            self._st_attempts += 1
        elif matched is not None and not resp.blocks:
            self._st_nothing_from(env.sender, matched)
        if added and self._st_reach() >= self._st_target and not self._st_probe:
            # We reach all we know of; the peer may hold more (answers are cut
            # by count and bytes): keep asking until an empty answer.
            self._st_probe = True
            self._st_limit = _NO_LIMIT
        if not self._st_requests:
            self._cancel_timer(TimerKind.STATE)
        elif matched is not None and added:
            self._start_timer(TimerKind.STATE, self.config.state_request_timeout_ms)
        self._request_state()  # before the commits below: pipelining
        self._st_drain()

    def _st_make_room(self, height: int, size: int, room: int) -> bool:
        """Whether a block of ``size`` bytes at ``height`` may be buffered now.

        The blocks that extend the next height always fit (they execute
        right away); another one evicts buffered blocks above it, highest
        first, or is refused. So the buffer stays within ``room`` plus one
        answer, and blocks above a gap can never crowd out the block that
        fills it.
        """
        if height <= self._st_reach() + 1:
            return True
        while self._st_buffer_bytes + size > room:
            highest = max(self._st_buffer, default=0)
            if highest <= height:
                return False
            self._st_buffer_bytes -= len(self._st_buffer.pop(highest).block)
        return True

    def _st_reach(self) -> int:
        """The committed height plus the buffered blocks right above it."""
        h = self.committed
        while h + 1 in self._st_buffer:
            h += 1
        return h

    def _st_nothing_from(self, peer: bytes, req: _StRequest) -> None:
        """``peer`` answered ``req`` with nothing: it holds nothing from ``req.lo`` on."""
        reach = self._st_reach()
        if reach >= self._st_target:
            if req.lo <= reach + 1:
                self._st_probe = False  # the probe found nothing more: done
                self._st_limit = _NO_LIMIT
            elif self._st_probe:
                self._st_limit = min(self._st_limit, req.lo - 1)  # asked past its tip
            return
        # It lags what we know was committed: ask the next peer from now on.
        self._st_rotation += 1
        self._st_attempts += 1
        if req.lo <= reach + 1:
            self._st_requests = [r for r in self._st_requests if r.peer != peer]

    def _st_drain(self) -> None:
        """Commit buffered blocks from the next height up; drop what is now below it."""
        progressed = False
        while (f := self._st_buffer.pop(self.committed + 1, None)) is not None:
            h = self.committed + 1
            self._st_buffer_bytes -= len(f.block)
            cert = f.certificate
            if f.parent != self._committed_digests[self.committed]:
                # A valid certificate on another chain would mean > f faulty validators.
                raise SafetyViolationError(f"certified block at {h} does not extend our chain")
            slot = self._slots.get(h)
            if slot is not None and slot.decided is not None and slot.decided[0] != cert.digest:
                raise SafetyViolationError(f"conflicting certificates at height {h}")
            self._c.state_blocks_received += 1
            self._commit_block(h, f.block, cert.digest, cert)
            progressed = True
        for h in [h for h in self._st_buffer if h <= self.committed]:
            self._st_buffer_bytes -= len(self._st_buffer.pop(h).block)
        if progressed:
            self._on_progress()
            self._execute()

    def _on_status(self, env: Envelope, st: Status) -> None:
        mine = self.vc_target if self.in_view_change else self.view
        if st.view < mine and env.sender not in self._view_replied:
            # It is behind in view: tell it ours, so that f + 1 of us reach it
            # even if the primary's NEW-VIEW (below) is lost. Once per tick.
            self._view_replied.add(env.sender)
            self._send_env(env.sender, sign(self._key, self.vs.chain_id,
                                            Status(self.committed, mine)))
        self._peer_views[env.sender] = st.view
        if st.view > mine:
            self._check_join()
        if st.committed_height < self.committed and env.sender not in self._status_replied:
            self._status_replied.add(env.sender)
            lo = st.committed_height + 1
            self._send_blocks(env.sender, lo, min(self.committed, lo + self.config.state_batch - 1))
        if (st.view < self.view and not self.in_view_change and self._nv_env is not None
                and self._nv_env.sender == self.id and env.sender not in self._nv_replied):
            self._nv_replied.add(env.sender)
            self._send_env(env.sender, self._nv_env)

    def _send_status(self) -> None:
        view = self.vc_target if self.in_view_change else self.view
        env = sign(self._key, self.vs.chain_id, Status(self.committed, view))
        self._broadcast_env(env)

    # ================================================================ periodic

    def _on_tick(self) -> None:
        self._start_timer(TimerKind.RESEND, self.config.resend_interval_ms)
        self._status_replied.clear()
        self._nv_replied.clear()
        self._view_replied.clear()
        self._requests_served.clear()
        stalled = self.committed == self._last_tick_committed
        transferred = self._c.state_blocks_received - self._last_tick_transferred
        transfer_only = not stalled and transferred >= self.committed - self._last_tick_committed
        self._last_tick_committed = self.committed
        self._last_tick_transferred = self._c.state_blocks_received
        self._quiet_ticks = self._quiet_ticks + 1 if stalled else 0
        if transfer_only:
            self._transfer_ticks += 1
        elif not stalled:
            self._transfer_ticks = 0
        hint, self._higher_view_seen = self._higher_view_seen, False
        if self.in_view_change or (stalled and self._has_work()):
            # In a view change even while committing by state transfer: a
            # replica that joined a view the others are already in needs its
            # VIEW-CHANGE re-sent until the primary answers with the NEW-VIEW.
            self._resend_own()
            self._send_status()
            self._st_attempts = 0
            self._request_state()
        elif (
            (hint and (stalled or transfer_only))
            or (transfer_only and self._transfer_ticks % IDLE_STATUS_TICKS == 0)
            or (self._quiet_ticks % IDLE_STATUS_TICKS == 0 and self._quiet_ticks)
        ):
            # Idle, perhaps just restarted with our first STATUS lost before the
            # links came up: without this an idle network would never tell us
            # that we are behind. Peers ahead answer with blocks. Likewise when
            # we only follow by state transfer: we may be left in an older
            # view, never stalled and never voting. Peers in a higher view
            # answer with their STATUS (see _check_join); votes of a higher
            # view make us ask at once. (Not while we commit by consensus: then
            # our view is live, and a Byzantine peer could make us ask each tick.)
            self._send_status()
        self._step()  # retries NOT_YET validations and idle proposals
        self._arm_progress()

    def _resend_own(self) -> None:
        """Re-send (identical bytes) every own message that may still be needed."""
        if self.in_view_change:
            env = self._own.get(("vc", self.vc_target, 0))
            if env is not None:
                self._broadcast_env(env)
                self._offer_blocks(resend=True)
            return
        if self._nv_env is not None and self._nv_env.sender == self.id:
            self._broadcast_env(self._nv_env)
        for h in sorted(self._slots):
            if h <= self.committed:
                continue
            for key in (("pp", self.view, h), ("p", self.view, h)):
                env = self._own.get(key)
                if env is not None:
                    self._broadcast_env(env)
            s = self._slots[h]
            if s.sent_commit_view >= 0:
                env = self._own.get(("c", s.sent_commit_view, h))
                if env is not None:
                    self._broadcast_env(env)
        latest_cp = max((k[2] for k in self._own if k[0] == "cp"), default=0)
        if latest_cp > self.stable.height:
            self._broadcast_env(self._own[("cp", 0, latest_cp)])

    # ================================================================ restart

    def _restore(self, records: list[WalRecord]) -> None:
        """Rebuild what the WAL says we signed, so we never sign against it."""
        if not records:
            return
        self._replaying = True
        try:
            nvs: list[tuple[Envelope, NewView]] = []
            for r in records:
                if isinstance(r, WalStable) and r.proof.height > self.stable.height:
                    self.stable = r.proof
            for r in records:
                if isinstance(r, WalPrepared):
                    p = r.proof
                    if p.height > self.stable.height:
                        slot = self._slot(p.height)
                        if slot.prepared is None or slot.prepared.view < p.view:
                            slot.prepared = p
                elif isinstance(r, WalVote):
                    try:
                        env = codec.decode(r.envelope, Envelope)
                    except LedgerError:
                        raise LocalProtocolError("undecodable envelope in WAL") from None
                    if isinstance(env.payload, NewView):
                        nvs.append((env, env.payload))
                    if env.sender == self.id:
                        key = _own_key(env.payload)
                        if key is not None:
                            self._own[key] = env
            if self.stable.height > self.committed:
                self._st_target = self.stable.height
            if nvs:
                env, nv = max(nvs, key=lambda e: e[1].view)
                self._enter_view(env, nv)
            own_views = [k[1] for k in self._own if k[0] in ("pp", "p", "c", "nv")]
            if own_views and max(own_views) > self.view:
                self.view = max(own_views)
            vc_views = [k[1] for k in self._own if k[0] == "vc"]
            if vc_views and max(vc_views) > self.view:
                self.in_view_change = True
                self.vc_target = max(vc_views)
                own_vc = self._own[("vc", self.vc_target, 0)]
                if isinstance(own_vc.payload, ViewChange):
                    self._vc_store.setdefault(self.id, {})[self.vc_target] = SignedViewChange(
                        self.id, own_vc.payload, own_vc.signature
                    )
            for env in list(self._own.values()):
                pl = env.payload
                above = getattr(pl, "height", 0) > self.committed
                if isinstance(pl, PrePrepare) and pl.view == self.view and above:
                    slot = self._slot(pl.height)
                    slot.blocks[pl.digest] = pl.block
                    slot.pp_view, slot.pp_digest, slot.pp_state = pl.view, pl.digest, _PP.OK
                elif isinstance(pl, Prepare) and pl.height > self.committed:
                    slot = self._slot(pl.height)
                    pkey = (pl.view, pl.digest, pl.parent)
                    slot.prepares.setdefault(pkey, {})[self.id] = env.signature
                    slot.sent_prepare_view = max(slot.sent_prepare_view, pl.view)
                elif isinstance(pl, Commit) and pl.height > self.committed:
                    slot = self._slot(pl.height)
                    slot.commits.setdefault((pl.view, pl.digest), {})[self.id] = env.signature
                    slot.sent_commit_view = max(slot.sent_commit_view, pl.view)
        finally:
            self._replaying = False
            self._effects.clear()
