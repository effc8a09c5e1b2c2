"""The write-ahead log: framing, replay, torn tails, corruption, rewrite."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.errors import WALCorruptionError
from consensus.messages import CheckpointProof, Prepare
from consensus.wal import FileWAL, MemoryWAL, WalStable, WalVote, encode_frame, scan_frames
from ledger.errors import CorruptionError

from .helpers import signed

D = bytes(range(32))


def _records(k: int) -> list[WalVote]:
    return [WalVote(signed(0, Prepare(0, h, D, D))) for h in range(1, k + 1)]


def test_append_sync_replay(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    wal = FileWAL(path)
    for r in _records(5):
        wal.append(r)
    wal.sync()
    wal.close()
    again = FileWAL(path)
    assert again.records() == _records(5)
    assert again.truncated_bytes == 0
    again.close()


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20])
def test_torn_tail_is_truncated(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "wal"
    good = b"".join(encode_frame(r) for r in _records(3))
    last = encode_frame(_records(4)[3])
    path.write_bytes(good + last[:cut])
    wal = FileWAL(path)
    assert wal.records() == _records(3)
    assert wal.truncated_bytes == cut
    assert path.stat().st_size == len(good)
    wal.append(_records(4)[3])  # appending after the truncation works
    wal.close()
    assert FileWAL(path).records() == _records(4)


def test_bad_crc_on_last_frame_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    frames = [encode_frame(r) for r in _records(3)]
    last = bytearray(frames[-1])
    last[-1] ^= 0xFF
    path.write_bytes(frames[0] + frames[1] + bytes(last))
    wal = FileWAL(path)
    assert wal.records() == _records(2)
    assert wal.truncated_bytes == len(last)


def test_corruption_in_the_middle_is_an_error_naming_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    frames = [encode_frame(r) for r in _records(3)]
    middle = bytearray(frames[1])
    middle[12] ^= 0x01
    path.write_bytes(frames[0] + bytes(middle) + frames[2])
    with pytest.raises(WALCorruptionError) as info:
        FileWAL(path)
    assert info.value.offset == len(frames[0])
    assert isinstance(info.value, CorruptionError)
    assert str(len(frames[0])) in str(info.value)


def test_absurd_length_is_corruption() -> None:
    data = (2**31).to_bytes(4, "big") + bytes(4) + b"x" * 100
    with pytest.raises(WALCorruptionError):
        scan_frames(data)


def test_crc_good_but_undecodable_is_corruption() -> None:
    import struct
    import zlib

    payload = b"\xc1garbage"
    frame = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    with pytest.raises(WALCorruptionError):
        scan_frames(frame + encode_frame(_records(1)[0]))


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "wal"
    wal = FileWAL(path)
    for r in _records(50):
        wal.append(r)
    wal.sync()
    big = wal.size()
    keep = [WalStable(CheckpointProof(0, D, D, [])), *_records(2)]
    wal.rewrite(keep)
    assert wal.size() < big
    wal.append(_records(3)[2])
    wal.close()
    assert FileWAL(path).records() == [*keep, _records(3)[2]]
    assert not (tmp_path / "wal.tmp").exists()


def test_memory_wal_loses_unsynced_on_crash() -> None:
    wal = MemoryWAL()
    a, b = _records(2)
    wal.append(a)
    wal.sync()
    wal.append(b)
    wal.crash()
    assert wal.records() == [a]


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FRAMES = [encode_frame(r) for r in _records(6)]
_LOG = b"".join(_FRAMES)


@given(st.integers(min_value=0, max_value=len(_LOG)))
def test_any_truncation_replays_a_prefix(cut: int) -> None:
    records, valid = scan_frames(_LOG[:cut])
    assert records == _records(6)[: len(records)]
    assert valid <= cut
    assert cut - valid < len(_FRAMES[0])  # at most one (torn) frame is dropped


@given(st.integers(min_value=0, max_value=len(_LOG) - 1), st.integers(1, 255))
def test_any_flipped_byte_is_detected(pos: int, flip: int) -> None:
    """Damage before the last frame is always an error; in it, at most a torn tail."""
    data = bytearray(_LOG)
    data[pos] ^= flip
    last_frame_start = len(_LOG) - len(_FRAMES[-1])
    try:
        records, _ = scan_frames(bytes(data))
    except WALCorruptionError:
        return
    assert pos >= last_frame_start
    assert records == _records(5)
