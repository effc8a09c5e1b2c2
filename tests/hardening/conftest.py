"""Fixtures of the disk-fault tests: a small tmpfs that a test can fill."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MountDisk = Callable[[Path, int], Path]


@pytest.fixture
def mount_small_disk() -> Iterator[MountDisk]:
    """Mount a tmpfs of ``kib`` KiB at a directory; every mount is undone at teardown.

    Skips unless we may mount (root, and a kernel that allows tmpfs here).
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(where: Path, kib: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], check=False).returncode != 0:
                subprocess.run(["umount", "--lazy", str(where)], check=True)  # still busy


@pytest.fixture
def small_disk(tmp_path: Path, mount_small_disk: MountDisk) -> Path:
    """A 1 MiB tmpfs at ``tmp_path/disk``."""
    return mount_small_disk(tmp_path / "disk", 1024)
