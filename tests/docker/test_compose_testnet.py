"""The real thing: `medledger testnet init --docker`, the generated compose file,
the real node image and Prometheus, with a load of signed transactions.

This is the groundwork of issue 5's e2e suite (perturbations come on top):
the testnet comes up healthy and ready, commits what a replica accepted, every
node holds identical blocks and one state root, every accepted tx is committed
exactly once, Prometheus reports every target up with the nodes' height, and
``down -v`` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from node import compose
from node.keyfile import load_key_file
from node.load import prepare_registrations

from .helpers import (
    Images,
    compose_command,
    compose_project,
    free_port_block,
    http_get,
    prom_query,
    prom_ready,
    prom_targets,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

N = 4
TXS = 200


def _status(url: str) -> dict[str, Any] | None:
    r = http_get(url + "/v1/status")
    if r is None or r.status_code != 200:
        return None
    body: dict[str, Any] = r.json()
    return body


def _blocks(url: str, height: int) -> list[dict[str, Any]]:
    out = []
    for h in range(1, height + 1):
        r = httpx.get(f"{url}/v1/blocks/{h}", timeout=5.0)
        r.raise_for_status()
        out.append(r.json())
    return out


def test_real_compose_testnet_commits_identically_and_is_scraped(
    images: Images, tmp_path: Path
) -> None:
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to hand the node files (0600 keys) to the container's uid")
    out = tmp_path / "net"
    init = subprocess.run(
        [sys.executable, "-m", "node", "testnet", "init", "--docker",
         "--validators", str(N), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert (out / "docker-compose.yml").exists() and (out / "prometheus.yml").exists()
    # Same layout as init wrote, on free host ports, scraped every second.
    base_port = free_port_block(N + 1)
    settings = replace(
        compose.ComposeSettings(validators=N),
        host_api_port_base=base_port,
        host_prometheus_port=base_port + N,
        scrape_interval_s=1,
    )
    files = compose.write_compose(out, N, settings=settings)
    urls = [f"http://127.0.0.1:{base_port + i}" for i in range(N)]
    prom = f"http://127.0.0.1:{base_port + N}"
    genesis = json.loads((out / "genesis.json").read_text())
    env = {"MEDLEDGER_NODE_IMAGE": images.node, "MEDLEDGER_PROMETHEUS_IMAGE": images.prometheus}

    with compose_project(tool, files.compose, env):

        def all_ready() -> bool:
            return all((r := http_get(u + "/ready")) is not None and r.status_code == 200
                       for u in urls)  # fmt: skip

        wait_for(all_ready, timeout=180, what=f"{N} nodes ready")

        # Load: registrations signed by every hospital, submitted to a replica so
        # that they must travel to the primary by gossip.
        orgs = [(load_key_file(out / f"node{i}" / "node_key.json"), 0) for i in range(N)]
        txs = prepare_registrations(orgs, genesis["chain_id"], TXS, seed=5)
        st0 = _status(urls[0])
        assert st0 is not None
        replica = next(
            i for i, u in enumerate(urls) if (s := _status(u)) and s["node_id"] != st0["primary"]
        )
        r = httpx.post(
            urls[replica] + "/v1/txs/batch",
            json={"txs": [{"tx": p.data.hex(), "blob": None} for p in txs]},
            timeout=60.0,
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        accepted = {res["hash"] for res in results if res.get("error") is None}
        assert len(accepted) == TXS, [res for res in results if res.get("error")][:3]

        def converged() -> list[dict[str, Any]] | None:
            sts = [_status(u) for u in urls]
            if any(s is None for s in sts):
                return None
            heights = {s["height"] for s in sts if s is not None}
            if len(heights) != 1 or heights == {0}:
                return None
            chain = _blocks(urls[0], heights.pop())
            committed = sum(len(b["tx_hashes"]) for b in chain)
            return [s for s in sts if s is not None] if committed >= TXS else None

        statuses = wait_for(converged, timeout=180, what=f"{TXS} txs committed on every node")
        height = statuses[0]["height"]
        assert len({s["state_root"] for s in statuses}) == 1
        chains = [_blocks(u, height) for u in urls]
        for h in range(height):
            assert len({c[h]["hash"] for c in chains}) == 1, f"nodes differ at height {h + 1}"
        for chain in chains:
            counts = Counter(t for b in chain for t in b["tx_hashes"])
            assert set(counts) == accepted
            assert set(counts.values()) == {1}

        wait_for(lambda: prom_ready(prom), timeout=60, what="Prometheus ready")

        def all_up() -> list[dict[str, Any]] | None:
            targets = prom_targets(prom)
            ok = len(targets) == N and all(t["health"] == "up" for t in targets)
            return targets if ok else None

        targets = wait_for(all_up, timeout=120, what=f"{N} targets up")
        assert sorted(t["labels"]["instance"] for t in targets) == [
            f"node{i}:26657" for i in range(N)
        ]

        def scraped_height() -> list[dict[str, Any]] | None:
            result = prom_query(prom, "min(medledger_consensus_height)")
            return result if result and float(result[0]["value"][1]) >= height else None

        wait_for(scraped_height, timeout=60, what=f"Prometheus to see height {height}")
