"""Children of the crash-safety test: commit blocks to a LevelDB dir until killed.

``python -m tests.storage.crash_child --serve`` is a tiny fork server: it
imports the store code once, then for each ``go PATH RUN`` line on stdin forks
a child that opens the store at PATH, prints ``ready <last height>`` and
commits the bundle of every next height (derived from the height alone, see
:func:`crash_bundle`) until it is killed, RUN heights per write batch
(:meth:`storage.store.Store.begin_run`; 1: one :meth:`~storage.store.Store.commit`
per height). Runs start at multiples of RUN, so a store that ends anywhere
but at the end of a run was left with part of a batch. The server prints
``pid <pid>`` for each child and ``exit <pid> <code>`` once it has reaped it.

Why a fork server: a fresh interpreter costs ~0.4 s to start here, a fork a
few milliseconds, which buys many more kills within the test's time budget.
The server is single-threaded and never opens a database, so forking it is
safe (unlike forking the test process, or multiprocessing's forkserver, which
on Python 3.11 re-runs pytest's main module in every child).

``python -m tests.storage.crash_child PATH`` runs one child in the foreground.
"""

from __future__ import annotations

import os
import sys

from storage.api import CommitBundle
from storage.store import open_leveldb
from tests.storage.helpers import make_bundle

CRASH_TXS = 30
CRASH_BLOBS = 3
CRASH_BLOB_SIZE = 16384


def crash_bundle(height: int) -> CommitBundle:
    """About 50 KiB of writes in ~100 keys per height, so a kill can land inside a batch."""
    return make_bundle(height, txs=CRASH_TXS, blobs=CRASH_BLOBS, blob_size=CRASH_BLOB_SIZE)


def run(path: str, heights_per_batch: int = 1) -> None:
    """Commit forever (until killed) on top of whatever the store at ``path`` holds."""
    store = open_leveldb(path)
    last = store.latest_height()
    print(f"ready {last}", flush=True)
    height = 0 if last is None else last + 1
    while True:
        if heights_per_batch == 1:
            store.commit(crash_bundle(height))
            height += 1
            continue
        batch = store.begin_run()
        for _ in range(heights_per_batch):
            batch.add(crash_bundle(height))
            height += 1
        batch.write()


def serve() -> None:
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        path, _, size = rest.rpartition(" ")
        if command != "go" or not path or not size.isdigit() or int(size) < 1:
            print(f"error bad command {line!r}", flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                sys.stdin.close()
                run(path, int(size))
            finally:
                os._exit(1)  # never return into the server loop
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
