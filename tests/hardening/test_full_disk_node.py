"""A full disk under a running node: it stops cleanly, and resumes from a copy on a bigger disk.

One real ``medledger start`` process (a one-validator testnet, so it commits
on its own) keeps its data dir -- LevelDB store and consensus WAL -- on a
small tmpfs while registrations pour in, until a write fails. Then, as an
operator would see it:

* the process exits with 74 (EX_IOERR), its last line is the one
  ``medledger: error: STORAGE_FULL: data dir <dir>: no space left on device ...``
  line and nothing it printed is a traceback;
* started again on the same full disk it stops the same way (at start or at
  its first write);
* the data dir copied to a normal disk verifies whole (``Store.verify``) at the
  height the message names, the node starts from the copy and the chain goes
  on from there.

Where the tmpfs sits decides which write fails: ``store`` puts only the
LevelDB directory on it (a symlink from the data dir), so a block commit in
the consensus service's worker thread fails; ``wal`` puts the data dir on it
but the LevelDB directory elsewhere, so a WAL append or sync fails before a
vote is sent; ``data-dir`` shares the tmpfs, as a real deployment would, and
whichever fills first fails.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

import httpx
import pytest

from ledger.keys import KeyPair
from node.keyfile import load_key_file
from node.load import PreparedTx, prepare_registrations
from node.runner import LocalNode, LocalTestnet, wait_for
from storage.store import open_leveldb
from tests.hardening.conftest import MountDisk

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

DISK_KIB = 1536
BATCH = 100
EXIT_IOERR = 74


def _set_data_dir(config_path: Path, data_dir: Path) -> None:
    text = config_path.read_text()
    text, n = re.subn(r'(?m)^data_dir = ".*"$', f'data_dir = "{data_dir}"', text)
    assert n == 1, text
    config_path.write_text(text)


def _next_nonce(node: LocalNode, key: KeyPair) -> int:
    r = node.get(f"/v1/accounts/{key.public_key.hex()}")
    r.raise_for_status()
    return int(r.json()["next_nonce"])


def _height(node: LocalNode) -> int:
    status = node.status()
    return -1 if status is None else int(status["height"])


class _Feeder:
    """Posts a batch of new patients' registrations each time it is called.

    Nonces continue from the node's ``next_nonce`` (pending txs included) at
    every refill; while the node does not answer, nothing is sent.
    """

    def __init__(self, node: LocalNode, key: KeyPair, seed: int) -> None:
        self.node, self.key, self.seed = node, key, seed
        self.txs: list[PreparedTx] = []
        self.posted = self.sent = 0

    def post_next(self) -> None:
        if self.posted == len(self.txs) and not self._refill():
            return
        chunk = self.txs[self.posted : self.posted + BATCH]
        body = {"txs": [{"tx": p.data.hex(), "blob": None} for p in chunk]}
        self.posted += len(chunk)
        with contextlib.suppress(httpx.HTTPError):  # the node is stopping: its exit tells
            httpx.post(f"{self.node.api_url}/v1/txs/batch", json=body, timeout=5)
            self.sent += len(chunk)

    def _refill(self) -> bool:
        try:
            status = self.node.status()
            nonce = _next_nonce(self.node, self.key) if status is not None else None
        except httpx.HTTPError:
            return False
        if status is None or nonce is None:
            return False
        self.seed += 1  # new patients every time
        self.txs = prepare_registrations([(self.key, nonce)], status["chain_id"], 20 * BATCH,
                                         seed=self.seed)  # fmt: skip
        self.posted = 0
        return True


def _feed_until_exit(node: LocalNode, feeder: _Feeder) -> int:
    def exited() -> tuple[int] | None:
        assert node.proc is not None
        code = node.proc.poll()
        if code is None:
            feeder.post_next()
            return None
        return (code,)

    (code,) = wait_for(exited, timeout=300, interval=0.01, what="the node to stop")
    return code


def _check_one_line(log: str, code: int, data_dir: Path, failing: str) -> str:
    """Exit 74, no traceback, and the last line the only error line; returns it."""
    lines = [line for line in log.splitlines() if line.strip()]
    assert code == EXIT_IOERR, lines[-20:]
    assert "Traceback" not in log, log[-4000:]
    errors = [line for line in lines if line.startswith("medledger: error:")]
    assert errors == [lines[-1]], lines[-20:]
    assert errors[0].startswith(
        f"medledger: error: STORAGE_FULL: data dir {data_dir}: no space left on device"
    ), errors[0]
    assert re.search(rf"no space left on device \({failing}", errors[0]), errors[0]
    return errors[0]


# on_tmpfs -> what the one error line must name as the write that failed
FAILING = {
    "store": "LevelDB at ",
    "wal": "consensus WAL ",
    "data-dir": "(LevelDB at |consensus WAL )",
}


@pytest.mark.parametrize("on_tmpfs", sorted(FAILING))
def test_full_disk_stops_the_node_cleanly_and_a_copy_resumes(
    tmp_path: Path, mount_small_disk: MountDisk, on_tmpfs: str
) -> None:
    net = LocalTestnet(tmp_path / "net", 1)
    net.init()
    node = net.nodes[0]
    key = load_key_file(node.home / "node_key.json")
    disk = mount_small_disk(tmp_path / "disk", DISK_KIB)
    data_dir = tmp_path / "data" if on_tmpfs == "store" else disk / "data"
    data_dir.mkdir()
    if on_tmpfs == "store":
        (disk / "ledger").mkdir()
        (data_dir / "ledger").symlink_to(disk / "ledger")
    elif on_tmpfs == "wal":
        (tmp_path / "ledger").mkdir()
        (data_dir / "ledger").symlink_to(tmp_path / "ledger")
    _set_data_dir(node.config_path, data_dir)

    with net:
        net.start(0)
        net.wait_ready([0], timeout=90)
        feeder = _Feeder(node, key, seed=0)
        code = _feed_until_exit(node, feeder)
    log = node.log_path.read_text(errors="replace")
    line = _check_one_line(log, code, data_dir, FAILING[on_tmpfs])
    found = re.search(r"stopped cleanly at height (\d+)", line)
    assert found is not None, line
    stopped_at = int(found.group(1))
    assert stopped_at >= 1, "the disk was full before the first block"
    print(f"{on_tmpfs}: {feeder.sent} txs posted, stopped: {line}")

    # Started again on the still full disk: it stops the same way, at start or first write.
    with net:
        net.start(0)
        code = _feed_until_exit(node, _Feeder(node, key, seed=1000))
    again = node.log_path.read_text(errors="replace")[len(log) :]
    line = _check_one_line(again, code, data_dir, FAILING["data-dir"])
    print(f"{on_tmpfs}, restarted on the full disk: {line}")
    found = re.search(r"stopped cleanly at height (\d+)", line)  # else: "did not start"
    if found is not None:  # a torn WAL tail cut at start can free room for a height or two
        assert int(found.group(1)) >= stopped_at, line
        stopped_at = int(found.group(1))

    # The operator copies the data dir to a bigger disk and starts the node there.
    moved = tmp_path / "moved"
    shutil.copytree(data_dir, moved, symlinks=False)
    _set_data_dir(node.config_path, moved)
    with open_leveldb(moved / "ledger") as store:
        assert store.verify().last_height == stopped_at
    with net:
        net.start(0)
        net.wait_ready([0], timeout=90)
        assert _height(node) >= stopped_at
        _Feeder(node, key, seed=2000).post_next()
        net.wait_height(stopped_at + 1, [0], timeout=60)
        assert net.stop(0) == 0
    with open_leveldb(moved / "ledger") as store:
        report = store.verify()
        assert report.last_height is not None and report.last_height > stopped_at
