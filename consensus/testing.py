"""A toy application and a discrete-event network simulator for the PBFT core.

The simulator drives sans-IO :class:`consensus.core.Replica` objects directly:
one seeded PRNG decides every link delay, drop, duplication and fault, and
simulated time jumps from event to event, so a schedule with thousands of
messages runs in a fraction of a second and replays exactly from its seed.

Storage survives a crash: a node's committed blocks (``ToyStorage``) and its
WAL (:class:`consensus.wal.MemoryWAL`, which loses unsynced appends on crash)
are kept; its mempool, caches and the replica object are rebuilt on restart.

The toy application orders real client transactions (:class:`ledger.tx.Tx`,
ed25519-signed), so the checks are meaningful: every committed tx was
submitted and correctly signed, and none is committed twice.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import islice

from consensus.app import Verdict
from consensus.core import (
    Broadcast,
    CancelTimer,
    CommitBlock,
    ConsensusConfig,
    Effect,
    Evidence,
    Persist,
    Replica,
    RewriteWAL,
    SendTo,
    StartTimer,
    TimerKind,
)
from consensus.messages import (
    CheckpointProof,
    Commit,
    CommitCertificate,
    Envelope,
    Prepare,
    PreparedCert,
    PrePrepare,
    StateResponse,
    ViewChange,
    VoteSig,
    decode_envelope,
    encode_envelope,
    sign,
)
from consensus.validators import ValidatorSet
from consensus.wal import MemoryWAL, WalStore
from ledger import codec
from ledger.codec import Record
from ledger.errors import LedgerError
from ledger.hashing import H_BLOCK, sha256, tagged_hash
from ledger.keys import KeyPair, verify
from ledger.tx import RegisterPatient, Tx, make_tx

CHAIN_ID = "sim-chain"
MAX_BLOCK_BYTES = 1 << 20


class ToyBlock(Record, frozen=True):
    height: int
    parent: bytes
    salt: int  # lets a Byzantine primary build a second block with the same txs
    txs: list[Tx]

    def digest(self) -> bytes:
        return tagged_hash(H_BLOCK, codec.encode(self))


def genesis_digest(chain_id: str = CHAIN_ID) -> bytes:
    return tagged_hash(H_BLOCK, b"genesis:" + chain_id.encode())


@lru_cache(maxsize=4096)
def _decode_block(block: bytes) -> ToyBlock | None:
    try:
        return codec.decode(block, ToyBlock, max_size=MAX_BLOCK_BYTES)
    except LedgerError:
        return None


@dataclass
class ToyStorage:
    """What survives a crash: committed blocks with certificates, and the state digest."""

    blocks: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # digest, block, cert
    state: bytes = bytes(32)

    @property
    def height(self) -> int:
        return len(self.blocks)


class ToyApp:
    """Implements :class:`consensus.app.Application` over signed client txs."""

    def __init__(
        self, storage: ToyStorage, *, chain_id: str = CHAIN_ID, max_txs: int = 16
    ) -> None:
        self.storage = storage
        self.chain_id = chain_id
        self.max_txs = max_txs
        self.mempool: dict[bytes, Tx] = {}
        self.verified: set[bytes] = set()
        self.signature_checks = 0
        self.committed_txs: set[bytes] = set()
        for _, block, _ in storage.blocks:
            tb = _decode_block(block)
            assert tb is not None
            self.committed_txs.update(tx.hash() for tx in tb.txs)

    # -- mempool side ----------------------------------------------------------------

    def _check_sig(self, tx: Tx, h: bytes) -> bool:
        if h in self.verified:
            return True
        self.signature_checks += 1
        if tx.chain_id != self.chain_id or not verify(tx.sender, tx.sign_bytes(), tx.signature):
            return False
        self.verified.add(h)
        return True

    def submit(self, tx: Tx) -> bool:
        h = tx.hash()
        if h in self.committed_txs or h in self.mempool or not self._check_sig(tx, h):
            return False
        self.mempool[h] = tx
        return True

    # -- Application ---------------------------------------------------------------

    def _ancestor_txs(self, ancestors: Sequence[bytes]) -> set[bytes] | None:
        out: set[bytes] = set()
        for a in ancestors:
            tb = _decode_block(a)
            if tb is None:
                return None
            out.update(tx.hash() for tx in tb.txs)
        return out

    def propose(self, height: int, parent: bytes, ancestors: Sequence[bytes]) -> bytes | None:
        taken = self._ancestor_txs(ancestors) or set()
        txs = list(islice((tx for h, tx in self.mempool.items() if h not in taken), self.max_txs))
        if not txs:
            return None
        return codec.encode(ToyBlock(height, parent, 0, txs))

    def validate(
        self, height: int, parent: bytes, block: bytes, ancestors: Sequence[bytes]
    ) -> Verdict:
        tb = _decode_block(block)
        if tb is None:
            return Verdict.invalid("undecodable block")
        if tb.height != height or tb.parent != parent:
            return Verdict.invalid("wrong height or parent")
        if not tb.txs or len(tb.txs) > self.max_txs:
            return Verdict.invalid("bad tx count")
        taken = self._ancestor_txs(ancestors)
        if taken is None:
            return Verdict.invalid("undecodable ancestor")
        seen: set[bytes] = set()
        for tx in tb.txs:
            h = tx.hash()
            if h in seen or h in taken or h in self.committed_txs:
                return Verdict.invalid("duplicate tx")
            if not self._check_sig(tx, h):
                return Verdict.invalid("bad tx signature")
            seen.add(h)
        return Verdict.ok()

    def digest_of(self, block: bytes) -> bytes | None:
        tb = _decode_block(block)
        return None if tb is None else tb.digest()

    def parent_of(self, block: bytes) -> bytes | None:
        tb = _decode_block(block)
        return None if tb is None else tb.parent

    def has_pending(self) -> bool:
        return bool(self.mempool)

    def committed_block(self, height: int) -> tuple[bytes, bytes] | None:
        if 1 <= height <= self.storage.height:
            _, block, cert = self.storage.blocks[height - 1]
            return block, cert
        return None

    def commit(self, height: int, block: bytes, certificate: bytes) -> bytes:
        if height != self.storage.height + 1:
            raise AssertionError(f"commit out of order: {height} after {self.storage.height}")
        tb = _decode_block(block)
        assert tb is not None
        digest = tb.digest()
        self.storage.blocks.append((digest, block, certificate))
        self.storage.state = sha256(self.storage.state + digest)
        for tx in tb.txs:
            h = tx.hash()
            self.committed_txs.add(h)
            self.mempool.pop(h, None)
        return self.storage.state

    def last_committed(self) -> tuple[int, bytes]:
        if not self.storage.blocks:
            return 0, genesis_digest(self.chain_id)
        return self.storage.height, self.storage.blocks[-1][0]


# ====================================================================== simulator


def sim_config(**overrides: int) -> ConsensusConfig:
    """Timeouts scaled to simulated links of a few to tens of milliseconds."""
    base: dict[str, int] = dict(
        window=4,
        checkpoint_interval=8,
        progress_timeout_ms=400,
        view_change_timeout_ms=400,
        max_timeout_ms=3_200,
        resend_interval_ms=150,
        state_request_timeout_ms=400,
        state_batch=64,
    )
    base.update(overrides)
    return ConsensusConfig(**base)


@dataclass
class NetConfig:
    delay_min: int = 1
    delay_max: int = 10
    drop: float = 0.0
    duplicate: float = 0.0


_VOTE_KINDS = frozenset({"PrePrepare", "Prepare", "Commit"})
BYZANTINE_MODES = ("equivocate", "withhold", "bogus_vc", "forge_state")


@dataclass
class SimNode:
    index: int
    key: KeyPair
    storage: ToyStorage
    wal: WalStore
    app: ToyApp
    replica: Replica
    byzantine: str | None = None
    alive: bool = True
    epoch: int = 0
    timers: dict[TimerKind, int] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)
    wal_dirty: bool = False
    equivocated: dict[tuple[int, int], bytes] = field(default_factory=dict)

    @property
    def id(self) -> bytes:
        return self.key.public_key


class Simulation:
    """An in-process cluster of replicas on a simulated, faulty network."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        config: ConsensusConfig | None = None,
        net: NetConfig | None = None,
        byzantine: dict[int, str] | None = None,
        max_txs: int = 16,
        wal_factory: Callable[[int], WalStore] | None = None,
    ) -> None:
        """``wal_factory(i)`` opens node ``i``'s WAL (again, after a crash); default: memory."""
        self.wal_factory = wal_factory
        self.rng = random.Random(seed)
        self.seed = seed
        self.config = config or sim_config()
        self.net = net or NetConfig()
        self.max_txs = max_txs
        self.keys = [KeyPair.from_seed(sha256(b"validator:%d" % i)) for i in range(n)]
        self.vs = ValidatorSet(CHAIN_ID, [k.public_key for k in self.keys])
        self.genesis = genesis_digest()
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.partition: list[set[int]] | None = None
        self.isolated: set[int] = set()
        # (node, kind, view, height) -> digest of every vote an honest node ever sent
        self.signed_votes: dict[tuple[int, str, int, int], bytes] = {}
        self.double_votes: list[tuple[int, str, int, int]] = []
        self.messages_sent: dict[str, int] = {}
        self.largest_message: dict[str, int] = {}  # kind -> bytes of the largest one sent
        self.submitted: dict[bytes, Tx] = {}
        self.submit_time: dict[bytes, int] = {}
        self.commit_time: dict[tuple[int, bytes], int] = {}  # (node, tx hash) -> time
        self.propose_time: dict[int, int] = {}
        self.block_commit_times: dict[int, list[int]] = {}
        self._client = KeyPair.from_seed(sha256(b"client:%d" % seed))
        self._nonce = 0
        self.nodes: list[SimNode] = []
        byz = byzantine or {}
        for i, key in enumerate(self.keys):
            storage = ToyStorage()
            wal = wal_factory(i) if wal_factory is not None else MemoryWAL()
            app = ToyApp(storage, max_txs=max_txs)
            replica = self._make_replica(key, app, wal)
            self.nodes.append(SimNode(i, key, storage, wal, app, replica, byz.get(i)))
        for node in self.nodes:
            self._run(node, node.replica.start())

    def _make_replica(self, key: KeyPair, app: ToyApp, wal: WalStore) -> Replica:
        height, digest = app.last_committed()
        return Replica(
            self.config, key, self.vs, app,
            genesis_digest=self.genesis,
            committed_height=height,
            committed_digest=digest,
            wal_records=wal.records(),
        )

    # -- event queue -----------------------------------------------------------------

    def at(self, time: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, fn))

    def run_until(self, deadline: int, stop: Callable[[], bool] | None = None) -> bool:
        """Process events up to ``deadline``; True if ``stop`` became true first."""
        while self._queue and self._queue[0][0] <= deadline:
            if stop is not None and stop():
                return True
            time, _, fn = heapq.heappop(self._queue)
            self.now = max(self.now, time)
            fn()
        self.now = max(self.now, deadline)
        return stop() if stop is not None else False

    # -- network ---------------------------------------------------------------------

    def _linked(self, a: int, b: int) -> bool:
        if a in self.isolated or b in self.isolated:
            return False
        if self.partition is None:
            return True
        return any(a in g and b in g for g in self.partition)

    def _send(self, src: SimNode, dst: int, data: bytes, kind: str) -> None:
        if dst == src.index:
            return
        self.messages_sent[kind] = self.messages_sent.get(kind, 0) + 1
        self.largest_message[kind] = max(self.largest_message.get(kind, 0), len(data))
        copies = 1 + (1 if self.rng.random() < self.net.duplicate else 0)
        for _ in range(copies):
            if not self._linked(src.index, dst) or self.rng.random() < self.net.drop:
                continue
            delay = self.rng.randint(self.net.delay_min, self.net.delay_max)
            self.at(self.now + delay, partial(self._deliver, dst, data))

    def _deliver(self, dst: int, data: bytes) -> None:
        node = self.nodes[dst]
        if not node.alive:
            return
        self._run(node, node.replica.receive(data))

    # -- effects ---------------------------------------------------------------------

    def _run(self, node: SimNode, effects: list[Effect]) -> None:
        todo = list(effects)
        i = 0
        while i < len(todo):
            e = todo[i]
            i += 1
            if isinstance(e, Persist):
                node.wal.append(e.record)
                node.wal_dirty = True
            elif isinstance(e, RewriteWAL):
                node.wal.rewrite(e.records)
                node.wal_dirty = False
            elif isinstance(e, Broadcast | SendTo):
                if node.wal_dirty:
                    node.wal.sync()
                    node.wal_dirty = False
                self._outgoing(node, e)
            elif isinstance(e, CommitBlock):
                state = node.app.commit(e.height, e.block, codec.encode(e.certificate))
                self.block_commit_times.setdefault(e.height, []).append(self.now)
                tb = _decode_block(e.block)
                assert tb is not None
                for tx in tb.txs:
                    self.commit_time[(node.index, tx.hash())] = self.now
                todo.extend(node.replica.executed(e.height, state))
            elif isinstance(e, StartTimer):
                node.timers[e.kind] = e.token
                self.at(self.now + e.duration_ms,
                        partial(self._fire, node, e.kind, e.token, node.epoch))
            elif isinstance(e, CancelTimer):
                node.timers.pop(e.kind, None)
            elif isinstance(e, Evidence):
                node.evidence.append(e)

    def _fire(self, node: SimNode, kind: TimerKind, token: int, epoch: int) -> None:
        if not node.alive or node.epoch != epoch or node.timers.get(kind) != token:
            return
        del node.timers[kind]
        self._run(node, node.replica.timeout(kind, token))

    def _outgoing(self, node: SimNode, e: Broadcast | SendTo) -> None:
        if e.kind in _VOTE_KINDS and node.byzantine is None:
            env = decode_envelope(e.data, self.config.max_message_size)
            p = env.payload
            if isinstance(p, PrePrepare):
                self.propose_time.setdefault(p.height, self.now)
            if isinstance(p, PrePrepare | Prepare | Commit):
                key = (node.index, e.kind, p.view, p.height)
                prior = self.signed_votes.setdefault(key, p.digest)
                if prior != p.digest:
                    self.double_votes.append(key)
        if isinstance(e, SendTo):
            targets = [self.vs.index(e.peer)]
        else:
            targets = [j for j in range(len(self.nodes)) if j != node.index]
        if node.byzantine is not None:
            for j, data in self._byzantine_out(node, e, targets):
                self._send(node, j, data, e.kind)
            return
        for j in targets:
            self._send(node, j, e.data, e.kind)

    # -- Byzantine behaviour -----------------------------------------------------------

    def _byzantine_out(
        self, node: SimNode, e: Broadcast | SendTo, targets: list[int]
    ) -> list[tuple[int, bytes]]:
        mode = node.byzantine
        env = decode_envelope(e.data, self.config.max_message_size)
        p = env.payload
        half = [j for j in targets if j % 2 == 1]
        if mode == "equivocate" and isinstance(p, PrePrepare):
            tb = _decode_block(p.block)
            assert tb is not None
            alt = ToyBlock(tb.height, tb.parent, tb.salt + 1, tb.txs)
            alt_bytes = codec.encode(alt)
            node.equivocated[(p.view, p.height)] = alt.digest()
            alt_env = sign(node.key, CHAIN_ID, PrePrepare(p.view, p.height, alt.digest(),
                                                          alt_bytes))
            alt_data = encode_envelope(alt_env)
            out = [(j, alt_data if j in half else e.data) for j in targets]
            if self.rng.random() < 0.3:  # sometimes one replica sees both: evidence
                j = self.rng.choice(targets)
                out.append((j, e.data if j in half else alt_data))
            return out
        if mode == "equivocate" and isinstance(p, Prepare):
            d2 = node.equivocated.get((p.view, p.height))
            if d2 is not None:
                alt_p = Prepare(p.view, p.height, d2, p.parent)
                alt_data = encode_envelope(sign(node.key, CHAIN_ID, alt_p))
                return [(j, alt_data if j in half else e.data) for j in targets]
        if mode == "withhold" and type(p).__name__ in ("Prepare", "Commit", "Checkpoint"):
            return [(j, e.data) for j in targets if self.rng.random() < 0.2]
        if mode == "bogus_vc":
            out = [(j, e.data) for j in targets]
            if self.rng.random() < 0.1:
                view = node.replica.view + self.rng.randint(1, 40)
                gen = CheckpointProof(0, self.genesis, bytes(32), [])
                forged = PreparedCert(
                    0, 1, bytes(32), self.genesis,
                    [VoteSig(k.public_key, bytes(64)) for k in self.keys],
                )
                for vc in (ViewChange(view, gen, None, []),
                           ViewChange(view + 1, gen, None, [forged])):
                    data = encode_envelope(sign(node.key, CHAIN_ID, vc))
                    out.extend((j, data) for j in targets)
            return out
        if mode == "forge_state" and isinstance(p, StateResponse):
            forged_blocks = []
            for cb in p.blocks:
                c = cb.certificate
                bad = CommitCertificate(c.height, c.view, c.digest,
                                        [VoteSig(s.validator, bytes(64)) for s in c.commits])
                forged_blocks.append(type(cb)(cb.block, bad))
            data = encode_envelope(sign(node.key, CHAIN_ID, StateResponse(forged_blocks)))
            return [(j, data) for j in targets]
        return [(j, e.data) for j in targets]

    # -- clients and faults ------------------------------------------------------------

    def make_tx(self) -> Tx:
        self._nonce += 1
        body = RegisterPatient(sha256(b"patient:%d:%d" % (self.seed, self._nonce)))
        return make_tx(self._client, CHAIN_ID, self._nonce, body)

    def submit(self, nodes: Sequence[int] | None = None) -> bytes:
        """A fresh signed tx into the mempools of ``nodes`` (default: all alive)."""
        tx = self.make_tx()
        h = tx.hash()
        self.submitted[h] = tx
        self.submit_time[h] = self.now
        for i in nodes if nodes is not None else range(len(self.nodes)):
            node = self.nodes[i]
            if node.alive and node.app.submit(tx):
                self._run(node, node.replica.notify_pending())
        return h

    def submit_one(self) -> None:
        self.submit()

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        node.alive = False
        node.epoch += 1
        crash = getattr(node.wal, "crash", None)
        if crash is not None:
            crash()  # unsynced appends are lost (or torn)
        node.wal_dirty = False
        node.timers.clear()

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive:
            return
        node.app = ToyApp(node.storage, max_txs=self.max_txs)
        if self.wal_factory is not None:
            node.wal = self.wal_factory(i)
        node.replica = self._make_replica(node.key, node.app, node.wal)
        node.alive = True
        node.epoch += 1
        self._run(node, node.replica.start())

    def honest(self) -> list[SimNode]:
        return [n for n in self.nodes if n.byzantine is None]

    # -- checks ------------------------------------------------------------------------

    def check_safety(self) -> list[str]:
        """Agreement, validity, no double commit, valid certificates (honest nodes)."""
        problems: list[str] = [
            f"honest node {i} signed two {k} at view {v} height {h}"
            for (i, k, v, h) in self.double_votes
        ]
        by_height: dict[int, bytes] = {}
        for node in self.honest():
            seen_txs: set[bytes] = set()
            for h, (digest, block, cert_bytes) in enumerate(node.storage.blocks, start=1):
                prior = by_height.setdefault(h, digest)
                if prior != digest:
                    problems.append(f"agreement: node {node.index} differs at height {h}")
                try:
                    cert = codec.decode(cert_bytes, CommitCertificate)
                    cert.verify(self.vs)
                    ok = cert.height == h and cert.digest == digest
                except LedgerError:
                    ok = False
                if not ok:
                    problems.append(f"certificate: node {node.index} height {h}")
                tb = _decode_block(block)
                if tb is None or tb.digest() != digest:
                    problems.append(f"block: node {node.index} height {h} undecodable")
                    continue
                for tx in tb.txs:
                    th = tx.hash()
                    if th in seen_txs:
                        problems.append(f"double commit: node {node.index} height {h}")
                    seen_txs.add(th)
                    if th not in self.submitted:
                        problems.append(f"validity: unsubmitted tx at height {h}")
                    elif not verify(tx.sender, tx.sign_bytes(), tx.signature):
                        problems.append(f"validity: bad signature at height {h}")
        return problems

    def all_committed(self, txs: Sequence[bytes], nodes: Sequence[SimNode]) -> bool:
        # newest first: the first miss (usually a late tx) ends the scan early
        return all((n.index, h) in self.commit_time for h in reversed(txs) for n in nodes)


# ====================================================================== schedules


@dataclass
class ScheduleResult:
    seed: int
    n: int
    scenario: str
    ok: bool
    problems: list[str]
    heights: list[int]
    sim_time: int
    view_changes: int


def run_schedule(seed: int, n: int, scenario: str = "faults") -> ScheduleResult:
    """One randomised, reproducible schedule; see :func:`replay_command`.

    ``scenario`` is ``faults`` (up to f nodes crash-restart or are partitioned,
    on a lossy, duplicating, reordering network), ``byzantine`` (one Byzantine
    validator in a random mode, plus up to f - 1 crash faults), ``chaos``
    (rolling crashes, restarts and isolations, never more than f at once) or
    ``byzantine_chaos`` (one Byzantine validator plus rolling faults of f - 1).
    """
    rng = random.Random(seed * 7919 + n)
    f = (n - 1) // 3
    net = NetConfig(
        delay_min=1,
        delay_max=rng.choice([5, 10, 20]),
        drop=rng.choice([0.0, 0.0, 0.02, 0.05, 0.1]),
        duplicate=rng.choice([0.0, 0.02, 0.1]),
    )
    byz: dict[int, str] = {}
    faulty_budget = f
    if scenario in ("byzantine", "byzantine_chaos"):
        byz[rng.randrange(n)] = rng.choice(BYZANTINE_MODES)
        faulty_budget -= 1
    sim = Simulation(n, seed, net=net, byzantine=byz, max_txs=rng.choice([2, 8]))
    heal_at = 2_000
    candidates = [i for i in range(n) if i not in byz]
    rng.shuffle(candidates)
    faulty = candidates[: rng.randint(0, faulty_budget)]
    if scenario in ("chaos", "byzantine_chaos"):
        faulty = []
        _rolling_faults(sim, rng, faulty_budget, heal_at)
    for i in faulty:
        t1 = rng.randint(0, 1_200)
        t2 = rng.randint(t1 + 50, heal_at)
        if rng.random() < 0.5:
            sim.at(t1, partial(sim.crash, i))
            sim.at(t2, partial(sim.restart, i))
        else:
            sim.at(t1, partial(sim.isolated.add, i))
            sim.at(t2, partial(sim.isolated.discard, i))
    if rng.random() < 0.3:
        # a transient partition of the primary of view 0 with one other node
        t = rng.randint(0, 1_000)

        def split() -> None:
            if sim.partition is None:
                sim.partition = [{0, 1}, set(range(2, n))]
        sim.at(t, split)
        sim.at(t + rng.randint(100, 600), partial(setattr, sim, "partition", None))
    for _ in range(rng.randint(5, 30)):
        sim.at(rng.randint(0, heal_at), sim.submit_one)

    def heal() -> None:
        sim.partition = None
        sim.isolated.clear()
        for i in range(n):
            sim.restart(i)
    sim.at(heal_at, heal)
    sim.run_until(heal_at)
    heal()
    post = [sim.submit() for _ in range(3)]
    bound = heal_at + 30_000
    live = sim.run_until(bound, lambda: sim.all_committed(post, sim.honest()))
    problems = sim.check_safety()
    if not live:
        heights = [nd.storage.height for nd in sim.honest()]
        problems.append(f"liveness: post-heal txs not committed by {bound} ms (heights {heights})")
    return ScheduleResult(
        seed, n, scenario, not problems, problems,
        [nd.storage.height for nd in sim.nodes], sim.now,
        max(nd.replica.statistics().view_changes for nd in sim.nodes),
    )


def _rolling_faults(sim: Simulation, rng: random.Random, f: int, until: int) -> None:
    """Schedule a random walk of crash/restart/isolate/rejoin, at most ``f`` down at once."""
    n = len(sim.nodes)

    if f < 1:
        return

    def step() -> None:
        down = {nd.index for nd in sim.nodes if not nd.alive} | sim.isolated
        action = rng.random()
        if down and action < 0.5:
            i = rng.choice(sorted(down))
            sim.restart(i)
            sim.isolated.discard(i)
        elif len(down) < f:
            i = rng.choice([j for j in range(n) if j not in down])
            if action < 0.8:
                sim.crash(i)
            else:
                sim.isolated.add(i)
        later = sim.now + rng.randint(30, 300)
        if later < until:
            sim.at(later, step)

    sim.at(rng.randint(0, 200), step)


def replay_command(seed: int, n: int, scenario: str) -> str:
    return (
        "python -c 'from consensus.testing import run_schedule as r; "
        f"print(r({seed}, {n}, {scenario!r}))'"
    )


__all__ = [
    "CHAIN_ID",
    "Envelope",
    "NetConfig",
    "ScheduleResult",
    "SimNode",
    "Simulation",
    "ToyApp",
    "ToyBlock",
    "ToyStorage",
    "genesis_digest",
    "replay_command",
    "run_schedule",
    "sim_config",
]
