"""The ledger as PBFT's application: build, check and execute blocks.

This is the one place where consensus meets the ledger and storage
(``consensus.app.Application``). Consensus hands over opaque block bytes; here
they become :class:`ledger.block.Block` values that are checked before this
node PREPAREs them and executed, strictly in height order, once committed.

Time: the proposer stamps its wall clock (never earlier than the parent's
time + 1 ms); a validator refuses a block time more than ``max_time_skew_ms``
ahead of its own clock (NOT_YET: it may just be our clock lagging) and any
time not after the parent's. Apply sees only the header's time, so execution
stays deterministic.

Exactly once: a block may not repeat a tx that is committed, in an uncommitted
ancestor, or earlier in itself. A Byzantine proposer that tries is refused
here, and a block commits only with 2f + 1 commits, so at least f + 1 honest
validators ran this check on it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from consensus.app import Verdict
from ledger import codec
from ledger.apply import ApplyContext, apply_block
from ledger.block import Block, BlockHeader
from ledger.errors import LedgerError
from ledger.genesis import Genesis, genesis_apply, genesis_hash
from ledger.keys import KeyPair
from ledger.merkle import merkle_root
from ledger.results import ApplyResult
from ledger.state_tree import StateTree
from ledger.tx import Tx, tx_hash
from ledger.validate import check_tx
from node.mempool import LedgerTxChecker, Mempool
from storage.store import Store

log = logging.getLogger(__name__)

GENESIS_CERTIFICATE = b""  # height 0 is certified by the genesis file itself
#: Signature checks ahead of apply_block run in this many threads (PyNaCl
#: releases the GIL), and only for runs with at least this many unchecked txs.
_VERIFY_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))
_PREVERIFY_MIN_TXS = 32


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What one executed height changed; handed to the node's commit hook."""

    height: int
    block_hash: bytes
    block: Block
    result: ApplyResult
    missing_blobs: tuple[bytes, ...]  # blob hashes of committed txs this node never received


def open_chain(store: Store, genesis: Genesis) -> None:
    """Write the genesis state as height 0 of an empty store; check it on a used one."""
    ghash = genesis_hash(genesis)
    if store.latest_height() is None:
        result = genesis_apply(genesis)
        store.commit(
            result.bundle(
                block_hash=ghash,
                block_bytes=codec.encode(genesis),
                certificate=GENESIS_CERTIFICATE,
            )
        )
        return
    stored = store.get_block_hash(0)
    if stored != ghash:
        raise LedgerError(
            "the data directory belongs to another network: its genesis hash "
            f"{(stored or b'').hex()[:16]} differs from {ghash.hex()[:16]}"
        )


def proposal_spacing_for(block_interval_s: float, validators: int) -> tuple[float, float]:
    """``(batch_wait_s, idle_spacing_s)`` for a network of ``validators``.

    Up to 4 validators: ``block_interval_s`` between proposals while blocks
    are in flight and none when the pipeline is empty (lowest latency). Above,
    a block's rounds cost every node n - 1 signed messages each (about 16 ms
    of CPU per node per block measured at 16 validators on this machine's 2
    cores); proposing at once after every commit kept blocks at ~10 txs and
    spent the CPU on consensus (22 tx/s committed at 400 offered). So both
    waits grow with (n - 1) / 3, capped at 1 s (half the default progress
    timeout, which a deferred proposal must never approach): 0.4 s at 7
    validators, 0.6 s at 10, 1 s at 16 with the default 0.2 s.
    """
    if validators <= 4:
        return block_interval_s, 0.0
    scaled = min(PROPOSAL_SPACING_CAP_S, block_interval_s * (validators - 1) / 3)
    return max(block_interval_s, scaled), scaled


#: Largest wait between two proposals that :func:`proposal_spacing_for` sets.
PROPOSAL_SPACING_CAP_S = 1.0


class LedgerApplication:
    """``consensus.app.Application`` over the ledger, the mempool and the store."""

    def __init__(
        self,
        *,
        store: Store,
        genesis: Genesis,
        key: KeyPair,
        mempool: Mempool,
        ctx: ApplyContext,
        clock_ms: Callable[[], int],
        on_commit: Callable[[CommitInfo], None] | None = None,
        batch_wait_s: float = 0.0,
        idle_spacing_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._genesis = genesis
        self._params = genesis.params
        self._key = key
        self._mempool = mempool
        self._ctx = ctx
        self._clock_ms = clock_ms
        self._on_commit = on_commit
        self._batch_wait_s = batch_wait_s
        self._idle_spacing_s = idle_spacing_s
        self._monotonic = monotonic
        self._last_proposal = -math.inf
        self._tree = StateTree.load(store)
        self._decoded: OrderedDict[bytes, Block] = OrderedDict()  # block bytes -> Block
        self._decoded_cap = max(8, 4 * self._params.window)
        self._decoded_lock = threading.Lock()
        self._tx_hashes: OrderedDict[bytes, list[bytes]] = OrderedDict()  # block hash -> hashes
        self._executed: deque[CommitInfo] = deque()  # filled by commit(), drained by after_commit()
        self._tip = self._load_tip()  # (hash, block time) of the last committed height
        self._verifier: ThreadPoolExecutor | None = None  # see _preverify

    # -- decoding ----------------------------------------------------------------

    def _decode(self, data: bytes) -> Block | None:
        """Decode once per block: validate, digest and commit all ask for the same bytes.

        The bytes themselves are the key: Python hashes a bytes object once and
        keeps it, and a hit costs one memcmp, where a digest would re-hash up
        to a whole block on every call. The cache is shared with
        :meth:`commit`, which may run in a worker thread, hence the lock.
        """
        key = data
        with self._decoded_lock:
            cached = self._decoded.get(key)
            if cached is not None:
                self._decoded.move_to_end(key)
                return cached
        try:
            block = codec.decode(data, Block, max_size=self._params.max_block_bytes + 4096)
        except LedgerError:
            return None
        with self._decoded_lock:
            self._decoded[key] = block
            if len(self._decoded) > self._decoded_cap:
                self._decoded.popitem(last=False)
        return block

    def _hashes_of(self, block: Block) -> list[bytes]:
        """Tx hashes of ``block`` in order, computed once per block (validate, commit, reap)."""
        key = block.hash()
        with self._decoded_lock:
            hashes = self._tx_hashes.get(key)
        if hashes is None:
            hashes = [tx_hash(codec.encode(tx)) for tx in block.txs]
            with self._decoded_lock:
                self._tx_hashes[key] = hashes
                if len(self._tx_hashes) > self._decoded_cap:
                    self._tx_hashes.popitem(last=False)
        return hashes

    def digest_of(self, block: bytes) -> bytes | None:
        decoded = self._decode(block)
        return decoded.hash() if decoded is not None else None

    def parent_of(self, block: bytes) -> bytes | None:
        decoded = self._decode(block)
        return decoded.header.parent_hash if decoded is not None else None

    # -- what the chain looks like ------------------------------------------------

    def _load_tip(self) -> tuple[bytes, int]:
        height = self._store.latest_height() or 0
        tip_hash = self._store.get_block_hash(height) or b""
        return tip_hash, self._stored_time(height)

    def _stored_time(self, height: int) -> int:
        if height == 0:
            return self._genesis.genesis_time_ms
        raw = self._store.get_block_bytes(height)
        stored = self._decode(raw) if raw is not None else None
        return stored.header.time_ms if stored is not None else self._genesis.genesis_time_ms

    def _time_of(self, parent: bytes, ancestors: Sequence[Block]) -> int:
        """Block time of ``parent``: an ancestor, usually the tip, rarely an older block."""
        for block in reversed(ancestors):
            if block.hash() == parent:
                return block.header.time_ms
        tip_hash, tip_time = self._tip
        if parent == tip_hash:
            return tip_time
        height = self._store.height_of(parent)
        return self._stored_time(height) if height is not None else self._genesis.genesis_time_ms

    def _lagged_root(self, height: int) -> bytes | None:
        """State root the header of ``height`` must carry: after ``height - window``."""
        return self._store.state_root_at(max(0, height - self._params.window))

    def has_pending(self) -> bool:
        return self._mempool.has_includable()

    def committed_block(self, height: int) -> tuple[bytes, bytes] | None:
        if height < 1:
            return None
        block = self._store.get_block_bytes(height)
        cert = self._store.get_certificate(height)
        if block is None or cert is None:
            return None
        return block, cert

    # -- proposing ----------------------------------------------------------------

    def proposal_deferred(self, in_flight: int) -> bool:
        """Batching: hold a small block back while the pipeline is busy.

        With nothing in flight a proposal goes at once (lowest latency), unless
        ``idle_spacing_s`` is set and the last proposal is more recent than
        that. With blocks in flight, another one only pays for itself when it
        is full or when ``batch_wait_s`` has passed since the last one: per
        block PBFT costs three rounds of signed messages whatever the block
        holds, so a stream of one-tx blocks would spend the machine on
        consensus instead of transactions. The node re-polls the core while
        txs are pending. ``idle_spacing_s`` is for large networks, where those
        rounds cost so much (n^2 messages) that proposing at once after each
        commit kept blocks at a few txs: see :func:`proposal_spacing_for`.
        """
        if self._batch_wait_s <= 0:
            return False
        if len(self._mempool) >= self._params.max_block_txs:
            return False
        wait = self._batch_wait_s if in_flight else self._idle_spacing_s
        return self._monotonic() - self._last_proposal < wait

    def propose(self, height: int, parent: bytes, ancestors: Sequence[bytes]) -> bytes | None:
        if self.proposal_deferred(len(ancestors)):
            return None
        blocks = [b for b in (self._decode(a) for a in ancestors) if b is not None]
        in_flight = {h for b in blocks for h in self._hashes_of(b)}
        pending = self._mempool.reap(
            self._params.max_block_txs, self._params.max_block_bytes - 1024, skip=in_flight
        )
        if not pending:
            return None
        root = self._lagged_root(height)
        if root is None:
            return None  # cannot happen within the window; be idle rather than wrong
        time_ms = max(self._clock_ms(), self._time_of(parent, blocks) + 1)
        txs = [p.tx for p in pending]
        self._last_proposal = self._monotonic()
        header = BlockHeader(
            chain_id=self._genesis.chain_id,
            height=height,
            time_ms=time_ms,
            parent_hash=parent,
            tx_count=len(txs),
            tx_root=merkle_root([p.hash for p in pending]),
            state_root=root,
            proposer=self._key.public_key,
        )
        return codec.encode(Block(header, txs))

    # -- validating ---------------------------------------------------------------

    def validate(
        self, height: int, parent: bytes, block: bytes, ancestors: Sequence[bytes]
    ) -> Verdict:
        decoded = self._decode(block)
        if decoded is None:
            return Verdict.invalid("block does not decode")
        h = decoded.header
        if h.chain_id != self._genesis.chain_id:
            return Verdict.invalid("wrong chain id")
        if h.height != height:
            return Verdict.invalid(f"header height {h.height} is not {height}")
        if h.parent_hash != parent:
            return Verdict.invalid("parent hash does not match")
        if h.proposer not in self._genesis.validators:
            return Verdict.invalid("proposer is not a validator")
        if not decoded.txs:
            return Verdict.invalid("empty block")
        if h.tx_count != len(decoded.txs):
            return Verdict.invalid("tx count does not match")
        if len(decoded.txs) > self._params.max_block_txs:
            return Verdict.invalid("too many txs")
        if len(block) > self._params.max_block_bytes:
            return Verdict.invalid("block too large")
        ancestor_blocks = [b for b in (self._decode(a) for a in ancestors) if b is not None]
        if h.time_ms <= self._time_of(parent, ancestor_blocks):
            return Verdict.invalid("block time does not advance")
        if h.time_ms > self._clock_ms() + self._params.max_time_skew_ms:
            return Verdict.not_yet("block time is ahead of our clock")
        root = self._lagged_root(height)
        if root is None:
            return Verdict.not_yet(f"state after height {height - self._params.window} unknown")
        if h.state_root != root:
            return Verdict.invalid("state root does not match")
        seen = {x for b in ancestor_blocks for x in self._hashes_of(b)}
        hashes = self._hashes_of(decoded)
        for tx, txh in zip(decoded.txs, hashes, strict=True):
            if txh in seen or self._store.tx_location(txh) is not None:
                return Verdict.invalid(f"tx {txh.hex()[:16]} is repeated")
            seen.add(txh)
            try:
                check_tx(tx, txh, self._ctx.chain_id, self._ctx.limits, self._ctx.sig_cache)
            except LedgerError as exc:
                return Verdict.invalid(f"tx {txh.hex()[:16]}: {exc.code}")
        if merkle_root(hashes) != h.tx_root:
            return Verdict.invalid("tx root does not match")
        return Verdict.ok()

    # -- executing ----------------------------------------------------------------

    def commit(self, height: int, block: bytes, certificate: bytes) -> bytes:
        return self.commit_run([(height, block, certificate)])[0]

    def commit_run(self, items: Sequence[tuple[int, bytes, bytes]]) -> list[bytes]:
        """Execute consecutive committed heights and persist them in ONE synced batch.

        ``items`` are ``(height, block, certificate)`` in height order; the
        state digests (roots) come back in the same order. Each block is
        applied on top of the run's earlier heights (the run is the state
        reader, see :class:`storage.store.CommitRun`), and nothing is on disk,
        or visible to this node's readers, until the single durable write at
        the end: one fsync per run instead of one per height, and a crash
        leaves the store at the end of an earlier run. If a block fails to
        apply or the disk refuses the batch, nothing of the run is stored and
        the error propagates (the node must stop, as for any storage error).
        """
        blocks: list[tuple[int, bytes, bytes, Block, list[bytes]]] = []
        for height, block, certificate in items:
            decoded = self._decode(block)
            if decoded is None:  # consensus only commits what validated or carries a certificate
                raise LedgerError(f"committed block at height {height} does not decode")
            blocks.append((height, block, certificate, decoded, self._hashes_of(decoded)))
        checked = self._preverify([(b[3], b[4]) for b in blocks])
        run = self._store.begin_run()
        tree = self._tree
        infos: list[CommitInfo] = []
        roots: list[bytes] = []
        erased = False
        for i, (height, block, certificate, decoded, hashes) in enumerate(blocks):
            if checked is not None:
                checked[i].result()  # this block's signatures are in the cache (or refused)
            result = apply_block(run, decoded, self._ctx, tree, tx_hashes=hashes)
            blob_puts, missing = self._blobs_for(decoded.txs, hashes, run.has_blob)
            deleted = set(result.blob_deletes)
            run.add(
                result.bundle(
                    block_hash=decoded.hash(),
                    block_bytes=block,
                    certificate=certificate,
                    blob_puts=[(bh, b) for bh, b in blob_puts if bh not in deleted],
                )
            )
            if result.tree is not None:
                tree = result.tree
            erased = erased or bool(result.blob_deletes)
            infos.append(CommitInfo(height, decoded.hash(), decoded, result, tuple(missing)))
            roots.append(result.state_root)
        run.write()
        self._tree = tree
        if infos:
            last = infos[-1].block
            self._tip = (last.hash(), last.header.time_ms)
        if erased:
            self._store.compact_blobs()  # crypto-shredding: also purge LevelDB's old files
        for info in infos:
            if info.missing_blobs:
                log.warning(
                    "committed height %d without %d of its blobs",
                    info.height,
                    len(info.missing_blobs),
                )
        self._executed.extend(infos)
        return roots

    def _preverify(
        self, blocks: Sequence[tuple[Block, Sequence[bytes]]]
    ) -> list[Future[None]] | None:
        """Check the signatures of the blocks' uncached txs in worker threads, one job per block.

        A node that did not see these txs in its mempool (catching up, or a
        tx that reached it only inside a block) verifies them in
        ``apply_block``, one at a time on the commit thread: ~40 % of a
        catch-up's CPU. PyNaCl releases the GIL, so here they are checked on
        the other cores while the commit thread applies the blocks before.
        The checks are exactly those of ``apply_block`` for a tx it has not
        seen (size, then ``check_tx``); only successes enter the cache and a
        failure is left for ``apply_block`` to record, so results do not
        depend on which thread checked a tx. None: nothing worth a thread.
        """
        cache = self._ctx.sig_cache
        if cache is None:
            return None
        jobs = [
            [(tx, h) for tx, h in zip(b.txs, hashes, strict=True) if h not in cache]
            for b, hashes in blocks
        ]
        if sum(len(j) for j in jobs) < _PREVERIFY_MIN_TXS:
            return None
        if self._verifier is None:
            self._verifier = ThreadPoolExecutor(_VERIFY_THREADS, thread_name_prefix="sigcheck")
        return [self._verifier.submit(self._check_txs, job) for job in jobs]

    def _check_txs(self, txs: Sequence[tuple[Tx, bytes]]) -> None:
        ctx = self._ctx
        for tx, txh in txs:
            if len(codec.encode(tx)) > ctx.limits.max_tx_bytes:
                continue  # apply_block records TOO_LARGE
            with contextlib.suppress(LedgerError):  # apply_block records the refusal
                check_tx(tx, txh, ctx.chain_id, ctx.limits, ctx.sig_cache)

    def after_commit(self) -> list[CommitInfo]:
        """Finish, on the Trio thread, every height executed since the last call.

        :meth:`commit` may run in a worker thread (the consensus service keeps
        LevelDB's fsync off the event loop), but the mempool and its waiters
        belong to the Trio thread, so their update happens here, in order.
        """
        done: list[CommitInfo] = []
        while self._executed:
            info = self._executed.popleft()
            self._mempool.update(
                info.height,
                info.result.tx_hashes,
                LedgerTxChecker(self._store, self._ctx, time_ms=info.block.header.time_ms),
            )
            if self._on_commit is not None:
                self._on_commit(info)
            done.append(info)
        return done

    def _blobs_for(
        self, txs: Sequence[Tx], hashes: Sequence[bytes], has_blob: Callable[[bytes], bool]
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """Sidecar blobs of ``txs`` held by the mempool, and the hashes we lack.

        ``has_blob`` answers for the store as the run being committed sees it.
        """
        puts: list[tuple[bytes, bytes]] = []
        missing: list[bytes] = []
        for tx, txh in zip(txs, hashes, strict=True):
            wanted = _blob_hash_of(tx)
            if wanted is None or has_blob(wanted):
                continue
            pending = self._mempool.get(txh)
            if pending is not None and pending.blob is not None:
                puts.append((wanted, pending.blob))
            else:
                missing.append(wanted)
        return puts, missing


def _blob_hash_of(tx: Tx) -> bytes | None:
    body = tx.body
    blob_hash = getattr(body, "blob_hash", None) or getattr(body, "wrap_blob_hash", None)
    return blob_hash if isinstance(blob_hash, bytes) else None
