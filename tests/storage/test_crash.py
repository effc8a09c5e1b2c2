"""Crash safety: SIGKILL a committing process at random points; the store is always whole.

One LevelDB directory lives through :data:`LINEAGE` trials in a row, so each
trial also recovers from the previous kill (then a fresh one starts, which
bounds the cost of the full ``verify()`` after every kill). After each kill
the parent reopens the store, runs ``verify()`` and checks that the last
height is whole (block, hash, certificate, results, every tx, state, tree node
and blob of that height) and that nothing of the next height exists. Lineages
alternate between one batch per height and runs of several heights per batch
(:data:`RUNS`); with runs, the store must also end at the end of a run.
Children are forked by ``tests.storage.crash_child --serve`` (see there why).
Seed: ``MEDLEDGER_CRASH_SEED`` (printed); trials: ``MEDLEDGER_CRASH_TRIALS``.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import schema
from storage.store import Store, open_leveldb
from tests.storage.crash_child import crash_bundle
from tests.storage.helpers import block_hash, height_state_key

ROOT = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("MEDLEDGER_CRASH_TRIALS", "100"))
LINEAGE = 25
RUNS = (1, 6, 1, 11)  # heights per write batch, by lineage
DEADLINE = 30.0


def assert_whole(store: Store, height: int) -> None:
    b = crash_bundle(height)
    assert store.get_block_bytes(height) == b.block_bytes
    assert store.get_block_hash(height) == b.block_hash
    assert store.height_of(b.block_hash) == height
    assert store.get_certificate(height) == b.certificate
    assert store.get_results(height) == b.results
    assert store.state_root() == b.state_root
    assert store.state_root_at(height) == b.state_root
    for index, tx in enumerate(b.tx_hashes):
        assert store.tx_location(tx) == (height, index)
    for key, value in b.state_writes:
        assert store.get_state(key) == value
    for node_id, node in b.tree_writes:
        assert store.get_tree_node(node_id) == node
    for blob_hash, blob in b.blob_puts:
        assert store.get_blob(blob_hash) == blob


def assert_absent(store: Store, height: int) -> None:
    b = crash_bundle(height)
    for ns in schema.HEIGHT_NAMESPACES:
        assert store.kv.get(schema.height_key(ns, height)) is None, ns
    assert store.height_of(block_hash(height)) is None
    assert all(store.tx_location(tx) is None for tx in b.tx_hashes)
    assert store.get_state(height_state_key(height)) is None
    assert all(store.get_tree_node(n) is None for n, _ in b.tree_writes)
    assert not any(store.has_blob(h) for h, _ in b.blob_puts)


class Lines:
    """Lines from a pipe, each read with a deadline (no blocking forever on a dead child)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""

    def next(self) -> str:
        deadline = time.monotonic() + DEADLINE
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            assert ready, "fork server silent past the deadline"
            chunk = os.read(self._fd, 4096)
            assert chunk, "fork server exited"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def until(self, prefix: str) -> list[str]:
        """Words of the next line starting with ``prefix`` (earlier lines are skipped)."""
        while True:
            words = self.next().split()
            assert words and words[0] != "error", words
            if words[0] == prefix:
                return words[1:]


@pytest.mark.slow
def test_sigkill_while_committing_leaves_whole_blocks(tmp_path: Path) -> None:
    seed = int(os.environ.get("MEDLEDGER_CRASH_SEED", str(random.randrange(2**32))))
    print(f"crash test seed: MEDLEDGER_CRASH_SEED={seed}")
    rng = random.Random(seed)
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_child", "--serve"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert server.stdin is not None and server.stdout is not None
    lines = Lines(server.stdout.fileno())
    progressed = killed_early = max_height = 0
    per_batch = 1
    last: int | None = None
    alive: int | None = None  # pid of a child not yet reaped
    try:
        for trial in range(TRIALS):
            if trial % LINEAGE == 0:
                path = tmp_path / f"db{trial // LINEAGE}"
                last = None
                per_batch = RUNS[(trial // LINEAGE) % len(RUNS)]
            server.stdin.write(f"go {path} {per_batch}\n".encode())
            server.stdin.flush()
            (pid,) = map(int, lines.until("pid"))
            alive = pid
            if rng.random() < 0.1:
                killed_early += 1  # kill while the child opens and recovers the store
                time.sleep(rng.uniform(0.0, 0.02))
            else:
                assert lines.until("ready") == [str(last)], f"trial {trial}"
                time.sleep(rng.uniform(0.0, 0.1))  # the fault's timing, not a wait
            os.kill(pid, signal.SIGKILL)
            assert lines.until("exit") == [str(pid), str(-signal.SIGKILL)], f"trial {trial}"
            alive = None

            with open_leveldb(path) as store:
                report = store.verify()
                height = store.latest_height()
                assert report.last_height == height
                if last is not None:
                    assert height is not None and height >= last, f"trial {trial}: lost a commit"
                if height is not None:
                    assert report.base_height == 0
                    assert_whole(store, height)
                    assert (height + 1) % per_batch == 0, (
                        f"trial {trial}: height {height} ends inside a run of {per_batch}"
                    )
                assert_absent(store, 0 if height is None else height + 1)
            progressed += height != last
            last = height
            max_height = max(max_height, height or 0)
    finally:
        if alive is not None:  # a failed trial: leave no committing child behind
            os.kill(alive, signal.SIGKILL)
        server.stdin.close()
        try:
            server.wait(timeout=DEADLINE)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            server.stdout.close()
    print(
        f"crash test: {TRIALS} kills ({killed_early} during start-up), "
        f"{progressed} trials advanced, highest height {max_height}"
    )
    assert progressed > TRIALS // 2  # the children did commit between kills
