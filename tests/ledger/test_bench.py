"""The ledger micro-benchmark runs and prints well-formed figures (no speed is asserted)."""

from __future__ import annotations

import json

import pytest

from ledger import bench


def test_bench_prints_every_rate(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--blocks", "2", "--txs", "20", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["txs_per_block"] == 20 and out["decode_verify_tx_per_s"] > 0
    for backend in ("memory", "leveldb"):
        r = out[backend]
        assert r["apply_tx_per_s"] > 0 and r["commit_tx_per_s"] > 0
        assert r["apply_plus_commit_us_per_tx"] == pytest.approx(
            r["apply_us_per_tx"] + r["commit_us_per_tx"], abs=0.11
        )
