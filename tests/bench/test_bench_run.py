"""``medledger bench`` end to end on a tiny load: the output is well formed and sane.

Figures are not asserted (the machine is shared); only that the run measured
what it claims: every accepted tx committed, positive ordered latencies,
per-node CPU/RSS/disk present, the ceiling measured, the JSON complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def _run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "node",
        "bench",
        "--json",
        str(out),
        "--dir",
        str(tmp_path / "nets"),
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_tiny_sweep_and_catchup_are_well_formed(tmp_path: Path) -> None:
    result, stdout = _run_bench(
        tmp_path,
        "--validators",
        "4",
        "--rates",
        "100",
        "--phase-seconds",
        "2",
        "--mode",
        "sweep",
        "--mode",
        "catchup",
        "--catchup-blocks",
        "3",
        "--catchup-rate",
        "50",
    )
    assert "committed tx/s at saturation" in stdout and "caught up in" in stdout
    assert len(result["machine_before"]["load_average"]) == 3
    t = result["throughput"]
    assert t["validators"] == 4
    [phase] = t["phases"]
    assert phase["offered"] == 200
    assert phase["accepted"] == phase["committed"] == 200, phase
    assert phase["duplicates_committed"] == 0
    lat = phase["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    assert phase["committed_tx_per_s"] > 0 and phase["blocks"] >= 1
    assert len(phase["cpu_s_per_node"]) == 4 and all(c > 0 for c in phase["cpu_s_per_node"])
    assert phase["cpu_ms_per_tx_per_node"] > 0 and phase["view_changes"] >= 0
    assert t["saturation"]["committed_tx_per_s"] == phase["committed_tx_per_s"]
    ceiling = t["ceiling"]
    assert ceiling["verifications_per_s_per_core"] > 0 and ceiling["cores"] >= 1
    expected = ceiling["verifications_per_s_per_core"] * ceiling["cores"] / 4
    assert ceiling["tx_per_s"] == pytest.approx(expected, rel=0.01)
    assert 0 < ceiling["achieved_ratio"] < 1
    assert t["committed_total"] == 200
    assert [n["node"] for n in t["nodes"]] == [0, 1, 2, 3]
    for n in t["nodes"]:
        assert n["cpu_s"] > 0 and 0 < n["rss_mb"] <= n["peak_rss_mb"] and n["disk_bytes"] > 0
    assert t["bytes_per_committed_tx"] > 0 and t["mean_tx_bytes"] > 0
    c = result["catchup"]
    assert c["behind_blocks"] >= 3 and c["behind_txs"] > 0
    assert c["catchup_s"] > 0 and c["blocks_per_s"] > 0 and c["tx_per_s"] > 0
    assert result["scale"] is None
    assert _processes_mentioning(str(tmp_path)) == []


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (node processes left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def test_bad_option_is_one_line_and_no_testnet_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node", "bench", "--rates", "0", "--dir", str(tmp_path / "n")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "--rates" in done.stderr
    assert not (tmp_path / "n").exists()
