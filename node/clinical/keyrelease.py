"""Consent that executes itself: the custodian node releases record keys.

A record's blob carries key wraps for the readers known when it was
written. When a grant commits later that covers someone else (or a
break-glass access commits, or a record is anchored under a grant that
already exists), the reader still has no key. The custodian hospital's node
holds the record key wrapped for its own organisation key, which is the
node's key, so it unwraps it, re-wraps it for the reader and commits a
:class:`~ledger.tx.KeyRelease`, with no human involved.

Split in two:

* :func:`triggers` and :func:`needs_release` are the decision, pure over a
  block and a state view (unit-tested without processes);
* :class:`KeyReleaseService` is the Trio task: woken after every commit
  (:meth:`~KeyReleaseService.notify`), it folds the new heights into the
  :class:`~node.clinical.index.PatientIndex`, collects triggers, and submits a
  release for every wanted (record, reader) pair that still needs one. The
  release enters this node's mempool at once, so it commits in one of the
  next two blocks.

A wanted pair is retried on later commits (or every ``retry_s`` while any
waits) as long as its tx is neither pending nor committed (mempool full, a
nonce race with a client using the organisation key); it is dropped once the
reader holds a wrap, the rules no longer allow the release, its release tx
committed with a failure, or after ``MAX_ATTEMPTS`` refused submissions.
Nothing here changes state except through a signed tx; every release is
checked again by apply on every node.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from ledger import codec, envelope
from ledger.blob import make_wrap_blob
from ledger.block import Block
from ledger.consent import BreakGlassPolicy
from ledger.errors import LedgerError
from ledger.keys import KeyPair
from ledger.results import OK
from ledger.state import StateView
from ledger.tx import AnchorRecord, GrantConsent, KeyRelease, RecordAccess, Tx, make_tx
from node.clinical.index import PatientIndex, committed_txs
from node.clinical.reads import ReadStore, evaluate_now, wrap_of

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

MAX_WANTED = 10_000
MAX_ATTEMPTS = 5
RETRY_S = 1.0
RECENT_BLOCKS = 64


@dataclass(frozen=True, slots=True)
class Release:
    """A reader who should get a key wrap for a record this node keeps."""

    record_id: bytes
    reader: bytes


def triggers(
    view: StateView, index: PatientIndex, me: bytes, txs: Iterable[tuple[Tx, str]]
) -> Iterator[Release]:
    """Pairs that committed ``txs`` may have made releasable, for records ``me`` keeps.

    ``index`` must already include ``txs``. Candidates only: :func:`needs_release`
    decides.
    """
    for tx, code in txs:
        if code != OK:
            continue
        body = tx.body
        if isinstance(body, AnchorRecord) and body.custodian == me:
            for cid in index.consents_of(body.patient):
                entry = view.consent(cid)
                if entry is not None and entry.revoked_at is None:
                    yield Release(body.record_id, entry.grant.grantee)
        elif isinstance(body, GrantConsent):
            for rid in index.records_of(tx.sender):
                record = view.record(rid)
                if record is not None and record.custodian == me:
                    yield Release(rid, body.grantee)
        elif isinstance(body, RecordAccess):
            record = view.record(body.record_id)
            if record is not None and record.custodian == me:
                yield Release(body.record_id, tx.sender)


def needs_release(
    view: StateView,
    release: Release,
    me: bytes,
    *,
    time_ms: int,
    height: int,
    policy: BreakGlassPolicy,
) -> bool:
    """True iff ``me`` should (and may) release the record key to the reader now.

    Mirrors what apply checks for a :class:`KeyRelease`, so a release that
    would fail is never submitted: the record exists, is not erased, ``me``
    is its custodian, the reader is registered and holds no wrap, and a
    covering grant is active (any purpose) or the reader has an allowed
    break-glass access.
    """
    record = view.record(release.record_id)
    if record is None or record.erased_at is not None or record.custodian != me:
        return False
    if any(r.reader == release.reader for r in record.readers):
        return False
    if view.identity(release.reader) is None:
        return False
    if view.emergency_grant(release.record_id, release.reader) is not None:
        return True
    decision = evaluate_now(
        view,
        release.record_id,
        record,
        release.reader,
        time_ms=time_ms,
        height=height,
        policy=policy,
        purpose=None,
    )
    return decision.allowed


class Submitter(Protocol):
    """How the service hands a tx to its own node (the mempool, then gossip)."""

    async def submit(self, tx: bytes, blob: bytes | None) -> bytes: ...

    def next_nonce(self, sender: bytes, committed_next: int) -> int: ...

    def is_pending(self, tx_hash: bytes) -> bool: ...


@dataclass(slots=True)
class _Want:
    tx_hash: bytes | None = None
    attempts: int = 0


class KeyReleaseService:
    """The custodian's automatic key release (see the module docstring)."""

    def __init__(
        self,
        store: ReadStore,
        index: PatientIndex,
        key: KeyPair,
        chain_id: str,
        policy: BreakGlassPolicy,
        submitter: Submitter,
        *,
        max_wanted: int = MAX_WANTED,
        retry_s: float = RETRY_S,
    ) -> None:
        self._store = store
        self._index = index
        self._key = key
        self._me = key.public_key
        self._chain_id = chain_id
        self._policy = policy
        self._submitter = submitter
        self._max_wanted = max_wanted
        self._retry_s = retry_s
        self._wanted: dict[Release, _Want] = {}
        self._recent: dict[int, list[tuple[Tx, str]]] = {}
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)
        self.released = 0  # releases submitted (for tests and logs)

    def notify(self, height: int | None = None, txs: Sequence[tuple[Tx, str]] = ()) -> None:
        """A height committed: wake the task (never blocks; wakes coalesce).

        ``txs`` (the block's txs with their result codes), when given, spare
        the task from decoding the block again; a bounded number is kept,
        and any height not kept is read back from the store.
        """
        if height is not None and len(self._recent) < RECENT_BLOCKS:
            self._recent[height] = list(txs)
        # WouldBlock: a wake-up is already queued; it will see every new height.
        with contextlib.suppress(trio.WouldBlock):
            self._wake_send.send_nowait(None)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch up with the committed chain, then handle each commit until cancelled.

        Errors of one release (a typed ledger error from the mempool) are
        logged and retried on a later commit; a corrupt store raises.
        """
        task_status.started()  # catching up (below) must not delay the node's start
        await self.step()
        while True:
            # Woken by a commit, or after ``retry_s`` when releases still wait:
            # a refused submission must not depend on some unrelated tx committing.
            timeout = self._retry_s if self._wanted else math.inf
            with trio.move_on_after(timeout):
                await self._wake_recv.receive()
            await self.step()

    async def step(self) -> None:
        """Fold in every new committed height, then submit the releases still needed."""
        top = self._store.latest_height() or 0
        while self._index.height < top:
            height = self._index.height + 1
            txs = self._recent.pop(height, None)
            if txs is None:
                txs = [(tx, code) for _i, tx, code in committed_txs(self._store, height)]
            for tx, code in txs:
                self._index.fold(tx, code)
            self._index.height = height
            view = StateView(self._store)
            for release in triggers(view, self._index, self._me, txs):
                if release not in self._wanted and len(self._wanted) < self._max_wanted:
                    self._wanted[release] = _Want()
            await trio.lowlevel.checkpoint()  # a long catch-up must not stall the loop
        for stale in [h for h in self._recent if h <= self._index.height]:
            del self._recent[stale]
        if not self._wanted:
            return
        time_ms = self._latest_time(top)
        view = StateView(self._store)
        for release, want in list(self._wanted.items()):
            if want.tx_hash is not None and self._submitter.is_pending(want.tx_hash):
                continue
            if want.tx_hash is not None and self._store.tx_location(want.tx_hash) is not None:
                del self._wanted[release]  # committed; if the reader still lacks a wrap it failed
                continue
            if not needs_release(
                view, release, self._me, time_ms=time_ms, height=top + 1, policy=self._policy
            ):
                del self._wanted[release]
                continue
            await self._release(view, release, want)

    def _latest_time(self, height: int) -> int:
        raw = self._store.get_block_bytes(height) if height > 0 else None
        if raw is None:
            return 0
        return codec.decode(raw, Block).header.time_ms

    async def _release(self, view: StateView, release: Release, want: _Want) -> None:
        record = view.record(release.record_id)
        assert record is not None  # needs_release checked it
        want.attempts += 1
        try:
            own = wrap_of(self._store, release.record_id, record, self._me)
            if own is None:
                log.warning(
                    "cannot release record %s: it carries no wrap for this custodian",
                    release.record_id.hex()[:16],
                )
                del self._wanted[release]
                return
            record_key = envelope.unwrap_key(own.sealed_key, self._key)
            blob, blob_hash = make_wrap_blob(release.record_id, record_key, [release.reader])
            ident = view.identity(self._me)
            committed_next = ident.nonce if ident is not None else 0
            nonce = self._submitter.next_nonce(self._me, committed_next)
            tx = make_tx(
                self._key,
                self._chain_id,
                nonce,
                KeyRelease(release.record_id, release.reader, blob_hash),
            )
            want.tx_hash = await self._submitter.submit(tx.encode(), blob)
        except LedgerError as exc:
            log.warning(
                "key release of record %s to %s failed (%s), attempt %d",
                release.record_id.hex()[:16],
                release.reader.hex()[:16],
                exc.code,
                want.attempts,
            )
            if want.attempts >= MAX_ATTEMPTS:
                del self._wanted[release]
            return
        self.released += 1
        log.info(
            "released key of record %s to %s in tx %s",
            release.record_id.hex()[:16],
            release.reader.hex()[:16],
            want.tx_hash.hex()[:16],
        )
