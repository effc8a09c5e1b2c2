"""``medledger bench``: performance as a measured property (issue 6).

A benchmark run starts real validator processes on loopback, offers
pre-signed load open-loop at several rates, and reports committed tx/s at
saturation, submit-to-commit latency percentiles per offered rate, CPU seconds
and peak RSS per node, bytes on disk per committed tx, and the ed25519
verification ceiling measured in the same run. Further modes time a lagging
node's catch-up and repeat the sweep at several network sizes; ``--profile``
samples the primary and a replica with py-spy under saturation.

Public names live here; the code is in the private modules beside this file.
"""

from ._ceiling import Ceiling, measure_ceiling, usable_cores
from ._cli import bench
from ._presign import Presigner
from ._procfs import ProcStats, dir_bytes, fsync_latency_s, read_proc_stats
from ._profile import Profile, ProfileError, PySpy, parse_folded
from ._run import (
    BenchSettings,
    CatchupResult,
    PhaseResult,
    ScaleRow,
    SweepResult,
    machine_info,
    run_catchup,
    run_scale,
    run_sweep,
)

__all__ = [
    "BenchSettings",
    "CatchupResult",
    "Ceiling",
    "PhaseResult",
    "Presigner",
    "ProcStats",
    "Profile",
    "ProfileError",
    "PySpy",
    "ScaleRow",
    "SweepResult",
    "bench",
    "dir_bytes",
    "fsync_latency_s",
    "machine_info",
    "measure_ceiling",
    "parse_folded",
    "read_proc_stats",
    "run_catchup",
    "run_scale",
    "run_sweep",
    "usable_cores",
]
