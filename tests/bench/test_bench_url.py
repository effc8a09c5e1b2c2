"""``medledger bench --url``: a running network, reached by its API, benched in place.

A LocalTestnet plays the running network; the bench must not start nodes of
its own, must find the local node processes for CPU/RSS/disk, and must be
repeatable on the same chain (a second run registers new patients).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.runner import LocalTestnet

pytestmark = [pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTestnet]:
    net = LocalTestnet(tmp_path_factory.mktemp("running"), 4)
    net.init()
    net.start_all()
    try:
        net.wait_ready(timeout=120)
        yield net
    finally:
        net.stop_all(timeout=20)


def _bench(out: Path, net: LocalTestnet, *extra: str) -> tuple[dict[str, Any], str]:
    urls = ",".join(n.api_url for n in net.nodes)
    keys = [a for n in net.nodes for a in ("--key", str(n.home / "node_key.json"))]
    cmd = [sys.executable, "-m", "node", "bench", "--url", urls, *keys, "--json", str(out)]
    cmd += ["--rates", "40", "--phase-seconds", "1", "--commit-timeout", "60", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def _check_phase(t: dict[str, Any]) -> None:
    [phase] = t["phases"]
    assert phase["offered"] == 40
    assert phase["accepted"] == phase["committed"] == 40, phase
    lat = phase["latency_s"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    assert phase["blocks"] >= 1 and t["committed_total"] == 40
    assert t["ceiling"]["verifications_per_s_per_core"] > 0


def test_url_sweep_finds_local_processes_and_can_repeat(
    testnet: LocalTestnet, tmp_path: Path
) -> None:
    heights = [int(s["height"]) for n in testnet.nodes if (s := n.status()) is not None]
    result, stdout = _bench(tmp_path / "first.json", testnet)
    t = result["throughput"]
    assert t["target"] == ",".join(n.api_url for n in testnet.nodes)
    assert t["validators"] == 4
    _check_phase(t)
    pids = {n.proc.pid for n in testnet.nodes if n.proc is not None}
    assert len(pids) == 4
    for n in t["nodes"]:
        assert n["cpu_s"] > 0 and 0 < n["rss_mb"] <= n["peak_rss_mb"], n
        assert n["disk_bytes"] > 0 and n["disk_growth_bytes"] is not None
    assert t["bytes_per_committed_tx"] is not None
    assert "n/a" not in stdout and "committed tx/s at saturation" in stdout
    assert all(p["cpu_s_per_node"] and None not in p["cpu_s_per_node"] for p in t["phases"])
    # The bench started no node of its own: the same four processes serve the chain.
    assert {n.proc.pid for n in testnet.nodes if n.proc is not None} == pids
    assert all(n.running for n in testnet.nodes)
    after = [int(s["height"]) for n in testnet.nodes if (s := n.status()) is not None]
    assert min(after) > max(heights)

    # A second run on the same chain (new patients), with node0's process unknown:
    # its figures are n/a in the table and null in the JSON, the others' are measured.
    given = ",".join(["999999999", *(str(n.proc.pid) for n in testnet.nodes[1:] if n.proc)])
    again, stdout = _bench(tmp_path / "second.json", testnet, "--pid", given)
    t = again["throughput"]
    _check_phase(t)
    node0, *others = t["nodes"]
    assert node0["cpu_s"] is None and node0["peak_rss_mb"] is None
    assert node0["disk_bytes"] is None and node0["disk_growth_bytes"] is None
    assert all(n["cpu_s"] > 0 and n["disk_bytes"] > 0 for n in others), others
    assert t["bytes_per_committed_tx"] is None
    assert t["phases"][0]["cpu_ms_per_tx_per_node"] is None
    assert "n/a" in stdout and any("n/a" in note for note in t["notes"])


def test_url_mode_refuses_other_modes_and_missing_keys(tmp_path: Path) -> None:
    for args, needle in (
        (["--url", "http://127.0.0.1:9", "--mode", "catchup", "--key", "k"], "sweep only"),
        (["--url", "http://127.0.0.1:9"], "--key"),
        (["--key", "k"], "--url"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "node", "bench", "--dir", str(tmp_path / "n"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert needle in done.stderr
    assert not (tmp_path / "n").exists()
