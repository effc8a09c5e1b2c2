"""Per-process CPU time and memory, and directory sizes, read from Linux /proc.

The benchmark measures each node process from outside, so the node needs no
instrumentation and the figures include everything the process does (Python,
libsodium, LevelDB's own threads). ``VmHWM`` is the kernel's record of the
peak resident set, so no sampling can miss a short peak.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcStats", "dir_bytes", "fsync_latency_s", "read_proc_stats"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStats:
    """CPU seconds (user + system) used so far, current and peak RSS in bytes."""

    cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int


def read_proc_stats(pid: int) -> ProcStats | None:
    """Stats of a live process, or None if it is gone (or this is not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 2 (comm) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    kib: dict[str, int] = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            kib[name] = int(value.split()[0])
    return ProcStats(
        cpu_s=(utime + stime) / _CLK_TCK,
        rss_bytes=kib.get("VmRSS", 0) * 1024,
        peak_rss_bytes=kib.get("VmHWM", 0) * 1024,
    )


def dir_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # LevelDB compaction removed it meanwhile
                continue
    return total


def fsync_latency_s(directory: Path, *, samples: int = 20) -> float:
    """Median time to write and fsync 4 KiB in ``directory``.

    Every PBFT vote is synced to the WAL before it is sent and every height's
    LevelDB batch is synced, so on a shared or slow disk this, not the CPU,
    can bound the commit rate; the report shows it beside the figures.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return statistics.median(times)
