"""Per-process CPU time and memory, and directory sizes, read from Linux /proc.

The benchmark measures each node process from outside, so the node needs no
instrumentation and the figures include everything the process does (Python,
libsodium, LevelDB's own threads). ``VmHWM`` is the kernel's record of the
peak resident set, so no sampling can miss a short peak.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcStats",
    "cmdline",
    "cwd",
    "dir_bytes",
    "fsync_latency_s",
    "is_local_address",
    "listening_socket_inodes",
    "pids_holding",
    "read_proc_stats",
]

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


# --- finding the process behind a local URL ----------------------------------------------

_TCP_LISTEN = "0A"


def _proc_net_addr(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (little-endian words, as /proc/net/tcp writes them) -> (ip, port)."""
    hex_ip, _, hex_port = text.partition(":")
    raw = bytes.fromhex(hex_ip)
    # The kernel prints each 32-bit word in host byte order (little-endian here).
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(ordered)), int(hex_port, 16)


def listening_socket_inodes(ip: str, port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` at ``ip`` or at a wildcard address."""
    wanted = ipaddress.ip_address(ip)
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _TCP_LISTEN:
                continue
            local_ip, local_port = _proc_net_addr(cols[1])
            if local_port != port:
                continue
            addr = ipaddress.ip_address(local_ip)
            mapped = getattr(addr, "ipv4_mapped", None) or addr
            if addr.is_unspecified or mapped == wanted or addr == wanted:
                found.add(int(cols[9]))
    return found


def pids_holding(inodes: set[int]) -> set[int]:
    """Processes (readable by us) that hold one of these socket inodes open."""
    if not inodes:
        return set()
    links = {f"socket:[{i}]" for i in inodes}
    out: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:  # gone, or not ours
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in links:
                    out.add(int(proc.name))
                    break
            except OSError:
                continue
    return out


def is_local_address(ip: str) -> bool:
    """Whether ``ip`` belongs to this machine (binding to it succeeds only if it does)."""
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        return True
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it is gone or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
