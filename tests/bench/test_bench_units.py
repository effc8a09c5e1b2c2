"""The benchmark's parts that need no testnet: /proc, folding, presigning, the CLI."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from ledger.keys import KeyPair
from ledger.validate import check_tx_bytes
from node.bench import (
    PhaseResult,
    Presigner,
    dir_bytes,
    fsync_latency_s,
    measure_ceiling,
    parse_folded,
    read_proc_stats,
)
from node.bench._procfs import is_local_address, listening_socket_inodes, pids_holding
from node.bench._remote import find_node_process
from node.bench._run import _plateau, _saturating_rate, jsonable
from node.cli import main
from node.load import LoadReport

FOLDED = (
    (
        "process 1;main (node/app.py);commit (node/ledger_app.py);"
        "crypto_sign_open (nacl/bindings/crypto_sign.py) 30\n"
    )
    + """\
main (node/app.py);run (trio/_core/_run.py);get_events (trio/_core/_io_epoll.py) 50
main (node/app.py);commit (node/ledger_app.py);write (storage/kv.py) 20
garbage line without a count
"""
)


def test_parse_folded_shares() -> None:
    prof = parse_folded(FOLDED)
    assert prof.samples == 100
    assert dict(prof.self_share)["get_events (trio/_core/_io_epoll.py)"] == pytest.approx(0.5)
    inclusive = dict(prof.inclusive_share)
    assert inclusive["main (node/app.py)"] == pytest.approx(1.0)
    assert inclusive["commit (node/ledger_app.py)"] == pytest.approx(0.5)
    assert "process 1" not in inclusive
    assert dict(prof.package_share) == pytest.approx({"trio": 0.5, "nacl": 0.3, "storage": 0.2})
    assert dict(prof.project_share) == pytest.approx(
        {
            "main (node/app.py)": 1.0,
            "commit (node/ledger_app.py)": 0.5,
            "write (storage/kv.py)": 0.2,
        }
    )
    assert parse_folded("").samples == 0


def test_proc_stats_of_this_process_and_of_a_gone_one() -> None:
    sum(i * i for i in range(200_000))  # burn a little CPU
    st = read_proc_stats(os.getpid())
    assert st is not None
    assert st.cpu_s > 0
    assert 0 < st.rss_bytes <= st.peak_rss_bytes
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert read_proc_stats(child.pid) is None


def test_the_process_listening_on_a_local_port_is_found() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        inodes = listening_socket_inodes("127.0.0.1", port)
        assert len(inodes) == 1
        assert os.getpid() in pids_holding(inodes)
        # Not a node's command line: a URL on that port finds no node process.
        assert find_node_process(f"http://127.0.0.1:{port}") is None
    assert listening_socket_inodes("127.0.0.1", port) == set()
    assert is_local_address("127.0.0.1") and not is_local_address("192.0.2.1")
    assert find_node_process("http://192.0.2.1:80") is None  # TEST-NET: not this machine


def test_dir_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 23)
    assert dir_bytes(tmp_path) == 123
    assert dir_bytes(tmp_path / "missing") == 0
    assert fsync_latency_s(tmp_path / "probe", samples=3) > 0
    assert list((tmp_path / "probe").iterdir()) == []


def test_ceiling_is_per_core_times_cores_over_validators() -> None:
    c = measure_ceiling(4, seconds=0.05)
    assert c.verifications_per_s_per_core > 100
    assert c.tx_per_s == pytest.approx(c.verifications_per_s_per_core * c.cores / 4)


def test_presigner_keeps_lanes_and_nonces_consecutive() -> None:
    orgs = [(KeyPair.from_seed(bytes([i + 1]) * 32), 10 * i) for i in range(3)]
    with Presigner(2) as signer:
        txs = signer.registrations(orgs, "bench-chain", 20, seed=5)
        again = signer.registrations(orgs, "bench-chain", 20, seed=6)
    assert len(txs) == 20
    assert len({p.hash for p in txs} | {p.hash for p in again}) == 40
    nonces: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(txs):
        assert p.lane == i % 3
        tx, txh = check_tx_bytes(p.data, "bench-chain")  # canonical, right chain, signed
        assert txh == p.hash
        assert tx.sender == orgs[p.lane][0].public_key
        nonces[p.lane].append(tx.nonce)
    for lane, got in nonces.items():
        start = orgs[lane][1]
        assert got == list(range(start, start + len(got)))


def _phase(offered: int, accepted: int, committed: int, span: float) -> PhaseResult:
    r = LoadReport(offered=offered, accepted=accepted, committed=committed)
    r.latencies_s = [0.1] * committed
    r.first_submit, r.last_commit = 0.0, span
    return PhaseResult.from_report(100.0, r, [1.0])


def test_phase_saturation() -> None:
    assert not _phase(500, 500, 500, 5.2).saturated  # 96 tx/s of 100 offered
    assert _phase(500, 500, 500, 10.0).saturated  # 50 tx/s
    assert _phase(500, 500, 499, 5.0).saturated  # one accepted tx never committed
    assert _phase(500, 499, 499, 5.0).saturated  # one rejected


def test_sweep_goes_on_while_the_committed_rate_grows() -> None:
    keeping_up = _phase(500, 500, 500, 5.0)  # 100 tx/s of 100 offered
    slow = _phase(500, 500, 500, 10.0)  # 50 tx/s: behind its offer
    growing = _phase(500, 500, 500, 6.0)  # 83 tx/s: behind, but > 1.1 x 50
    assert not _plateau([keeping_up])
    assert not _plateau([slow])  # behind, but nothing to compare with yet
    assert not _plateau([keeping_up, slow])  # one unlucky phase is not a plateau
    assert not _plateau([slow, slow, growing])  # the last one still grew
    assert _plateau([keeping_up, slow, slow])  # two phases behind, neither faster
    assert _plateau([_phase(500, 400, 400, 5.0)])  # losing txs


def test_profile_runs_at_a_rate_the_network_cannot_keep_up_with() -> None:
    ok = _phase(500, 500, 500, 5.0)  # keeps up with 100/s
    assert _saturating_rate([ok]) == 200.0  # nothing saturated yet: offer twice the best
    behind = _phase(500, 500, 500, 10.0)
    assert _saturating_rate([behind]) == 100.0


def test_jsonable_turns_nan_into_null() -> None:
    assert jsonable({"a": [math.nan, 1.0], "b": (2, math.nan)}) == {
        "a": [None, 1.0],
        "b": [2, None],
    }


def test_bad_rates_is_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--rates", "100,fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medledger: error:") and "--rates" in err[0]


def test_unknown_process_figures_print_na_and_serialise_null() -> None:
    from node.bench import Ceiling, SweepResult
    from node.bench._report import format_sweep
    from node.bench._run import NodeFigures

    report = LoadReport(offered=10, accepted=10, committed=10, latencies_s=[0.1] * 10)
    report.first_submit, report.last_commit = 0.0, 1.0
    phase = PhaseResult.from_report(10.0, report, [math.nan, 0.5])
    known = NodeFigures(1, 2.0, 100 << 20, 120 << 20, 4096, 2048)
    unknown = NodeFigures(0, None, None, None, None, None)
    s = SweepResult(
        4,
        Ceiling(1000.0, 2, 4),
        [phase],
        [unknown, known],
        10,
        150.0,
        1.0,
        target="http://a:1,http://b:2",
    )
    text = format_sweep(s)
    assert "at http://a:1,http://b:2" in text
    assert "node0    n/a     n/a          n/a      n/a" in text
    out = jsonable(s.to_json())
    assert out["nodes"][0] == {
        "node": 0,
        "cpu_s": None,
        "rss_mb": None,
        "peak_rss_mb": None,
        "disk_bytes": None,
        "disk_growth_bytes": None,
    }
    assert out["nodes"][1]["peak_rss_mb"] == 120.0
    assert out["bytes_per_committed_tx"] is None  # one node's disk is unknown
    assert out["phases"][0]["cpu_ms_per_tx_per_node"] is None
