"""Key files: created 0600 from birth, never overwritten, refused when exposed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ledger.keys import KeyPair
from node.config import ConfigError
from node.keyfile import load_key_file, write_key_file


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_roundtrip_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "k.json"
    key = write_key_file(p)
    assert mode(p) == 0o600
    loaded = load_key_file(p)
    assert loaded.public_key == key.public_key and loaded.seed == key.seed
    doc = json.loads(p.read_text())
    assert doc == {"type": "ed25519", "seed": key.seed.hex(), "public_key": key.public_key.hex()}
    assert [x.name for x in tmp_path.iterdir()] == ["k.json"]  # no temp file left behind


def test_created_private_even_with_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        p = tmp_path / "k.json"
        write_key_file(p)
    finally:
        os.umask(old)
    assert mode(p) == 0o600


def test_never_overwrites(tmp_path: Path) -> None:
    p = tmp_path / "k.json"
    first = write_key_file(p)
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(p, KeyPair.generate())
    assert load_key_file(p).public_key == first.public_key


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o644, 0o660, 0o602])
def test_refuses_group_or_other_access(tmp_path: Path, bad_mode: int) -> None:
    p = tmp_path / "k.json"
    write_key_file(p)
    p.chmod(bad_mode)
    with pytest.raises(ConfigError) as info:
        load_key_file(p)
    assert f"mode {bad_mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)


def test_owner_only_read_is_accepted(tmp_path: Path) -> None:
    p = tmp_path / "k.json"
    key = write_key_file(p)
    p.chmod(0o400)
    assert load_key_file(p).public_key == key.public_key


def _private(p: Path, text: str) -> Path:
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return p


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not valid JSON"),
        ("[]", '"type": "ed25519"'),
        ('{"type": "rsa"}', '"type": "ed25519"'),
        ('{"type": "ed25519", "seed": "zz"}', "seed must be 64 lowercase hex"),
        ('{"type": "ed25519", "seed": "' + "AB" * 32 + '"}', "seed must be 64 lowercase hex"),
        (
            '{"type": "ed25519", "seed": "' + "01" * 32 + '", "public_key": "' + "02" * 32 + '"}',
            "does not match the seed",
        ),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, expected: str) -> None:
    p = _private(tmp_path / "k.json", text)
    with pytest.raises(ConfigError, match=expected):
        load_key_file(p)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_key_file(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=r"directory .* does not exist"):
        write_key_file(tmp_path / "no" / "such" / "k.json")
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key_file(d)
