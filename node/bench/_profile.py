"""Sampling profiles of node processes under load, with py-spy.

py-spy samples a running process from outside (every thread, native
extensions included), so the node needs no hook and the measured phase runs
the same code as production. ``--nonblocking`` keeps the target running while
it is sampled. The raw (folded-stack) output is reduced here to the two
tables the lead acts on: self time by function and time by package.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Profile", "ProfileError", "PySpy", "parse_folded"]

SAMPLE_RATE_HZ = 100


class ProfileError(Exception):
    """py-spy is missing or could not attach (it needs ptrace permission)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One process's samples reduced to shares (fractions of all samples)."""

    samples: int
    #: CPU seconds / wall seconds of the process while sampled (from /proc, set by the caller):
    #: py-spy's idle filter is a heuristic, so the on-CPU share is measured separately.
    cpu_fraction: float = math.nan
    self_share: list[tuple[str, float]] = field(default_factory=list)
    inclusive_share: list[tuple[str, float]] = field(default_factory=list)
    package_share: list[tuple[str, float]] = field(default_factory=list)
    #: Inclusive shares of the project's own functions (entry points left out):
    #: which of our code paths the time is spent under.
    project_share: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "cpu_fraction": None if math.isnan(self.cpu_fraction) else round(self.cpu_fraction, 3),
            "self": [[name, round(s, 4)] for name, s in self.self_share],
            "inclusive": [[name, round(s, 4)] for name, s in self.inclusive_share],
            "packages": [[name, round(s, 4)] for name, s in self.package_share],
            "project_inclusive": [[name, round(s, 4)] for name, s in self.project_share],
        }


def _package(frame: str) -> str:
    """``func (path/to/file.py)`` -> the top-level package or project folder."""
    _, _, where = frame.rpartition(" (")
    path = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            head = rest.split("/", 1)[0]
            return head.removesuffix(".py") if marker.startswith("site") else f"stdlib:{head}"
    head = path.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


PROJECT_PACKAGES = ("node", "consensus", "ledger", "storage")
_ENTRY_FRAMES = ("(node/__main__.py", "(node/cli.py", "run (node/app.py")


def _is_project(frame: str) -> bool:
    return _package(frame) in PROJECT_PACKAGES and not any(e in frame for e in _ENTRY_FRAMES)


def parse_folded(text: str, *, top: int = 20) -> Profile:
    """Reduce py-spy's raw output (``frame;frame;... count`` lines)."""
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    pkg_c: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        pkg_c[_package(frames[-1])] += count
        for f in set(frames):
            incl_c[f] += count
    if total == 0:
        return Profile(0)

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in c.most_common(top)]

    return Profile(
        samples=total,
        self_share=shares(self_c),
        inclusive_share=shares(incl_c),
        package_share=shares(pkg_c),
        project_share=shares(Counter({f: n for f, n in incl_c.items() if _is_project(f)})),
    )


def _py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy is not installed (pip install 'py-spy>=0.4,<0.5')")
    return found


class PySpy:
    """``py-spy record`` attached to one process for a fixed duration."""

    def __init__(self, pid: int, out: Path, duration_s: float) -> None:
        self.out = out
        self.duration_s = duration_s
        self._proc = subprocess.Popen(
            [
                _py_spy(),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(duration_s))),
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--format",
                "raw",
                "--function",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def result(self, *, top: int = 20) -> Profile:
        """Wait for py-spy to finish and reduce its output."""
        try:
            _, err = self._proc.communicate(timeout=self.duration_s + 60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            raise ProfileError("py-spy did not finish") from None
        if self._proc.returncode != 0 or not self.out.exists():
            msg = err.decode(errors="replace").strip().splitlines()
            raise ProfileError(f"py-spy failed: {msg[-1] if msg else self._proc.returncode}")
        return parse_folded(self.out.read_text(), top=top)

    def finish(self, *, top: int = 20) -> Profile:
        """Stop sampling now (SIGINT: py-spy writes what it has) and reduce the output.

        For phases whose length is not known in advance, such as a catch-up.
        """
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        return self.result(top=top)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
