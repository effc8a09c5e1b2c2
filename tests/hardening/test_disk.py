"""Disk faults: a lying disk stops the node at start, a torn WAL is cut, a full disk is survived.

* Bytes flipped in the LevelDB store — in a table file (LevelDB's own block
  checksums) or inside one stored value with LevelDB's checksums intact (our
  per-value CRC) — make ``Node.open`` raise :class:`CorruptionError` naming
  the bad key, and ``medledger start`` exit non-zero with one line, no traceback.
* A torn last frame of the consensus WAL (the crash hit mid-append) is
  truncated on open, at every possible cut; damage before the tail is refused.
* A full disk (a 1 MiB tmpfs, mounted here when running as root) makes commits
  fail without touching what was committed before: the store, moved to a
  bigger disk, verifies whole at the last good height.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import plyvel
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from consensus.core import Replica
from consensus.errors import WALCorruptionError
from consensus.messages import CheckpointProof, VoteSig, decode_envelope
from consensus.service import ConsensusService
from consensus.testing import CHAIN_ID, ToyApp, ToyStorage, genesis_digest, sim_config
from consensus.validators import ValidatorSet
from consensus.wal import FileWAL, WalRecord, WalStable, WalVote, encode_frame
from ledger.errors import CorruptionError, StorageFullError, StorageIOError
from ledger.hashing import sha256
from ledger.keys import KeyPair
from ledger.tx import RegisterPatient, make_tx
from node.app import Node
from node.cli import init_testnet
from node.config import Config, load_config
from storage import schema
from storage.checksum import HEADER_SIZE
from storage.store import open_leveldb
from tests.storage.helpers import make_bundle

# --- bytes flipped in the LevelDB store ----------------------------------------------------


@pytest.fixture
def node_config(tmp_path: Path) -> Config:
    """A one-validator testnet whose node has opened (and so initialised) its store once."""
    init_testnet(tmp_path / "net", 1)
    config = load_config(tmp_path / "net" / "node0" / "config.toml")
    node = Node.open(config)
    node.parts.store.close()
    return config


def _ledger_dir(config: Config) -> Path:
    return config.node.data_dir / "ledger"


def _start_cli(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``medledger start``; a node that does not refuse to start is killed after 60 s."""
    return subprocess.run(
        [sys.executable, "-m", "node", "start", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_clean_store_opens(node_config: Config) -> None:
    """The control: the same steps without a flipped byte start fine."""
    node = Node.open(node_config)
    try:
        assert node.parts.store.latest_height() == 0
    finally:
        node.parts.store.close()


def test_value_flipped_under_leveldb_checksums_stops_start(node_config: Config) -> None:
    """One bit flipped inside a stored value, LevelDB's own checksums still valid."""
    db = plyvel.DB(str(_ledger_dir(node_config)))
    try:
        key, raw = next(
            (k, v) for k, v in db.iterator() if schema.namespace_of(k) is schema.Namespace.STATE
        )
        damaged = bytearray(raw)
        damaged[HEADER_SIZE] ^= 0x01  # first payload byte
        db.put(key, bytes(damaged), sync=True)
    finally:
        db.close()
    with pytest.raises(CorruptionError) as info:
        Node.open(node_config)
    assert "state/" in info.value.message  # names the key's namespace
    done = _start_cli(_config_path(node_config))
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "checksum" in lines[0].lower() or "corrupt" in lines[0].lower(), lines[0]


def _config_path(config: Config) -> Path:
    """The config.toml that ``config`` was loaded from (the node's home, above its data dir)."""
    for path in config.node.data_dir.parents:
        if (path / "config.toml").exists():
            return path / "config.toml"
    raise AssertionError("no config.toml above the data dir")


def test_table_file_bytes_flipped_stop_start(node_config: Config) -> None:
    """Bytes flipped in LevelDB's table files: its block checksums refuse them."""
    path = _ledger_dir(node_config)
    db = plyvel.DB(str(path))
    db.compact_range()  # move everything from the log into table files
    db.close()
    tables = sorted(path.glob("*.ldb"))
    assert tables
    for table in tables:
        data = bytearray(table.read_bytes())
        for pos in range(64, len(data) // 2, 211):
            data[pos] ^= 0x5A
        table.write_bytes(bytes(data))
    with pytest.raises(CorruptionError):
        node = Node.open(node_config)
        node.parts.store.close()


# --- a torn consensus WAL tail -------------------------------------------------------------------


def _records() -> list[WalRecord]:
    sig = VoteSig(b"\x01" * 32, b"\x02" * 64)
    return [
        WalVote(b"vote-%d" % i)
        if i % 3
        else WalStable(CheckpointProof(i, bytes(32), bytes(32), [sig]))
        for i in range(6)
    ]


RECORDS = _records()
FRAMES = [encode_frame(r) for r in RECORDS]
WAL_BYTES = b"".join(FRAMES)
BOUNDARIES = [sum(len(f) for f in FRAMES[:i]) for i in range(len(FRAMES) + 1)]


@pytest.fixture(scope="module")
def wal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wal")


@given(cut=st.integers(0, len(WAL_BYTES)))
def test_torn_wal_tail_is_truncated_at_any_cut(wal_dir: Path, cut: int) -> None:
    path = wal_dir / f"cut-{cut}.wal"
    path.write_bytes(WAL_BYTES[:cut])
    wal = FileWAL(path, fsync=False)
    try:
        whole = max(i for i, b in enumerate(BOUNDARIES) if b <= cut)
        assert wal.records() == RECORDS[:whole]
        assert wal.truncated_bytes == cut - BOUNDARIES[whole]
        assert path.stat().st_size == BOUNDARIES[whole]
        wal.append(RECORDS[0])  # appends land after the valid prefix
        wal.sync()
    finally:
        wal.close()
    assert FileWAL(path, fsync=False).records() == [*RECORDS[:whole], RECORDS[0]]


def test_torn_wal_tail_with_garbage_is_truncated(tmp_path: Path) -> None:
    """A last frame whose CRC fails (a half-written sector) is a torn tail too."""
    path = tmp_path / "consensus.wal"
    last = bytearray(FRAMES[-1])
    last[-1] ^= 0xFF
    path.write_bytes(b"".join(FRAMES[:-1]) + bytes(last))
    wal = FileWAL(path)
    wal.close()
    assert wal.records() == RECORDS[:-1] and wal.truncated_bytes == len(last)


def test_damage_before_the_tail_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "consensus.wal"
    damaged = bytearray(WAL_BYTES)
    damaged[BOUNDARIES[2] + 9] ^= 0x01  # inside the third frame's payload
    path.write_bytes(bytes(damaged))
    with pytest.raises(WALCorruptionError) as info:
        FileWAL(path)
    assert info.value.offset == BOUNDARIES[2]
    assert path.read_bytes() == bytes(damaged)  # nothing is "repaired" behind our back


def test_node_start_truncates_a_torn_wal(node_config: Config) -> None:
    wal_path = node_config.node.data_dir / "consensus.wal"
    valid = wal_path.read_bytes() if wal_path.exists() else b""
    wal_path.write_bytes(valid + FRAMES[0][:7])
    node = Node.open(node_config)
    node.parts.store.close()
    assert wal_path.read_bytes() == valid


# --- a full disk (small_disk: tests/hardening/conftest.py) ----------------------------------


def test_full_disk_stops_commits_without_damage(small_disk: Path, tmp_path: Path) -> None:
    store = open_leveldb(small_disk / "db")
    height = 0
    try:
        with pytest.raises(StorageFullError) as info:
            while height < 10_000:
                store.commit(make_bundle(height, txs=5, blobs=1, blob_size=8192))
                height += 1
        assert height > 10, "the disk filled before a handful of heights"
        assert info.value.code == "STORAGE_FULL"
        assert str(small_disk / "db") in info.value.message
        assert "no space left on device" in info.value.message
        # Stopped: later writes are refused as well, and reads still see the last good height.
        with pytest.raises(StorageIOError):
            store.commit(make_bundle(height, txs=1))
        assert store.latest_height() == height - 1
    finally:
        store.close()
    # The operator moves the data to a bigger disk: everything committed is there, whole.
    moved = tmp_path / "moved"
    shutil.copytree(small_disk / "db", moved)
    with open_leveldb(moved) as reopened:
        report = reopened.verify()
        assert report.last_height == height - 1
        last = make_bundle(height - 1, txs=5, blobs=1, blob_size=8192)
        assert reopened.get_block_bytes(height - 1) == last.block_bytes
        reopened.commit(make_bundle(height, txs=5, blobs=1, blob_size=8192))  # and it goes on
        assert reopened.latest_height() == height


def _fill(disk: Path) -> None:
    """Write a filler file until the disk refuses another byte."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        chunk = b"\0" * 4096
        with pytest.raises(OSError) as info:
            while True:
                fh.write(chunk)
        assert info.value.errno == errno.ENOSPC


def test_full_disk_wal_refuses_and_keeps_what_was_synced(small_disk: Path, tmp_path: Path) -> None:
    wal = FileWAL(small_disk / "consensus.wal")
    for r in RECORDS[:3]:
        wal.append(r)
    wal.sync()
    _fill(small_disk)
    wal.append(WalVote(b"v" * 6_000))  # buffered (under 8 KiB), over the last page's slack
    with pytest.raises(StorageFullError) as info:
        wal.sync()
    assert info.value.code == "STORAGE_FULL"
    assert str(small_disk / "consensus.wal") in info.value.message
    # Unusable from here on, even for a record that would fit: a later fsync proves nothing.
    with pytest.raises(StorageFullError):
        wal.append(WalVote(b"x"))
    with pytest.raises(StorageFullError):
        wal.sync()
    wal.close()  # does not raise: the node closes it on the way out
    moved = tmp_path / "moved.wal"
    shutil.copyfile(small_disk / "consensus.wal", moved)
    reopened = FileWAL(moved)
    reopened.close()
    # What was synced is there; of the vote that failed at most a torn tail, cut on open.
    assert reopened.records() == RECORDS[:3]


class _RecordingTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def kinds(self) -> set[str]:
        """Payload types sent (``Status`` is gossip that is not persisted; votes are)."""
        return {type(decode_envelope(d, 1 << 24).payload).__name__ for d in self.sent}

    async def send_to(self, peer: bytes, data: bytes) -> None:
        self.sent.append(data)

    async def broadcast(self, data: bytes) -> None:
        self.sent.append(data)


def _primary_service(wal: FileWAL) -> tuple[ConsensusService, _RecordingTransport]:
    """The view-0 primary of four toy validators, with one tx to propose."""
    keys = [KeyPair.from_seed(sha256(b"disk:%d" % i)) for i in range(4)]
    vs = ValidatorSet(CHAIN_ID, [k.public_key for k in keys])
    key = next(k for k in keys if k.public_key == vs.primary(0))
    app = ToyApp(ToyStorage())
    client = KeyPair.from_seed(sha256(b"disk-client"))
    app.submit(make_tx(client, CHAIN_ID, 1, RegisterPatient(sha256(b"disk-patient"))))
    replica = Replica(
        sim_config(), key, vs, app, genesis_digest=genesis_digest(), wal_records=wal.records()
    )
    transport = _RecordingTransport()
    service = ConsensusService(replica, app, wal, transport)
    service.notify_pending()
    return service, transport


async def test_a_vote_whose_wal_sync_fails_is_never_sent(small_disk: Path) -> None:
    """Persist-before-send on a full disk: the pre-prepare's sync fails, nothing leaves."""
    wal = FileWAL(small_disk / "consensus.wal")
    _fill(small_disk)
    service, transport = _primary_service(wal)
    with trio.fail_after(30), pytest.raises(StorageFullError):
        await service.run()
    assert transport.kinds() <= {"Status"}, transport.kinds()  # no PrePrepare left
    wal.close()


async def test_the_same_vote_is_sent_when_the_disk_has_room(tmp_path: Path) -> None:
    """The control: the same primary with room on its disk proposes and sends."""
    wal = FileWAL(tmp_path / "consensus.wal")
    service, transport = _primary_service(wal)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        with trio.fail_after(30):
            while "PrePrepare" not in transport.kinds():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    wal.close()
    assert FileWAL(tmp_path / "consensus.wal").records()  # it was written before it was sent
