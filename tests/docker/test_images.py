"""The local images and the compose scaffolding, on a real Docker engine.

The session builds (or reuses) the images with ``testnet/images.sh``, exactly as
an operator would; its timings go to stderr (``pytest -s`` shows them). The node
daemon is not needed: the node image's own Python checks the install, and a
stand-in node (``fake_node.py``, layered on the node image) serves ``/health``
and ``/metrics`` where ``medledger start`` will, so the health check, the data
volume, Prometheus on a container network and the generated compose file are
all exercised for real. Every container, network and volume a test creates is
removed in a finalizer, also when the test fails.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from node import compose

from .helpers import (
    PY,
    Images,
    Resources,
    compose_command,
    compose_project,
    free_port,
    free_port_block,
    health,
    http_get,
    inspect,
    prom_query,
    prom_ready,
    prom_targets,
    run,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# -- the node image ------------------------------------------------------------------


def test_node_image_interface(images: Images) -> None:
    config = inspect(images.node)["Config"]
    assert config["User"] == "medledger"
    assert config["Entrypoint"] == ["/opt/medledger/bin/medledger"]
    assert config["Cmd"] == ["start", "--config", "/data/config.toml"]
    assert "/data" in config["Volumes"]
    assert "26657/tcp" in config["ExposedPorts"]
    test = " ".join(config["Healthcheck"]["Test"])
    assert "/health" in test and "MEDLEDGER_API_PORT" in test


def test_node_image_imports_everything_as_non_root(images: Images) -> None:
    script = (
        "import os, node, ledger, consensus, storage, plyvel, nacl, libp2p, trio, msgspec\n"
        "import nacl.signing, plyvel, tempfile\n"
        "k = nacl.signing.SigningKey.generate(); k.verify_key.verify(k.sign(b'x'))\n"
        "d = tempfile.mkdtemp(); db = plyvel.DB(d, create_if_missing=True)\n"
        "db.put(b'k', b'v'); assert db.get(b'k') == b'v'; db.close()\n"
        "print(os.getuid(), os.getgid(), os.access('/opt/medledger/lib', os.W_OK))\n"
    )
    done = run(["docker", "run", "--rm", "--entrypoint", PY, images.node, "-c", script])
    # Native extensions (LevelDB, libsodium) load and work; the code is not writable.
    assert done.stdout.split() == ["10001", "10001", "False"]


def test_node_cli_help(images: Images) -> None:
    probe = run(
        [
            "docker", "run", "--rm", "--entrypoint", PY, images.node, "-c",
            "import importlib.util; print(importlib.util.find_spec('node.cli') is not None)",
        ]
    )  # fmt: skip
    if probe.stdout.strip() != "True":
        pytest.skip("node/cli.py is not written yet, so the image's entrypoint cannot run")
    done = run(["docker", "run", "--rm", images.node, "--help"])
    assert "start" in done.stdout


def test_data_volume_is_writable_by_the_node_user(images: Images, res: Resources) -> None:
    vol = res.volume("data")
    script = (
        "import os; open('/data/probe', 'w').write('x'); st = os.stat('/data/probe');"
        "print(st.st_uid, oct(os.stat('/data').st_mode & 0o777))"
    )
    done = run(["docker", "run", "--rm", "-v", f"{vol}:/data", "--entrypoint", PY,
                images.node, "-c", script])  # fmt: skip
    assert done.stdout.split() == ["10001", "0o755"]


def test_healthcheck_follows_the_health_endpoint(images: Images, res: Resources) -> None:
    fast = ["--health-interval", "1s", "--health-timeout", "3s", "--health-retries", "2",
            "--health-start-period", "1s"]  # fmt: skip
    good = res.container("good", *fast, images.fake_node)
    bad = res.container("bad", *fast, "-e", "FAKE_NODE_HEALTH=503", images.fake_node)
    wait_for(lambda: health(good) == "healthy", timeout=120, what="a healthy node")
    wait_for(lambda: health(bad) == "unhealthy", timeout=120, what="an unhealthy node")
    log = inspect(bad)["State"]["Health"]["Log"]
    assert all(entry["ExitCode"] != 0 for entry in log)
    assert health(good) == "healthy"


# -- Prometheus ---------------------------------------------------------------------


def test_prometheus_scrapes_a_node_on_a_container_network(
    images: Images, res: Resources, tmp_path: Path
) -> None:
    net = res.network("net")
    res.container("node0", "--network", net, "--network-alias", "node0", images.fake_node)
    prom_yml = tmp_path / "prometheus.yml"
    prom_yml.write_text(compose.render_prometheus_config(1, scrape_interval_s=1))
    prom_yml.chmod(0o644)
    port = free_port()
    res.container(
        "prometheus", "--network", net, "-p", f"127.0.0.1:{port}:9090",
        "-v", f"{prom_yml}:/etc/prometheus/prometheus.yml:ro", images.prometheus,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: prom_ready(base), timeout=120, what="Prometheus /-/ready")

    def node0_up() -> list[dict[str, Any]] | None:
        targets = prom_targets(base)
        return targets if [t["health"] for t in targets] == ["up"] else None

    (target,) = wait_for(node0_up, timeout=120, what="node0 scraped as up")
    assert target["labels"]["instance"] == "node0:26657"
    (sample,) = wait_for(
        lambda: prom_query(base, "medledger_consensus_height"),
        timeout=60,
        what="medledger_consensus_height",
    )
    assert sample["value"][1] == "7"


# -- the generated compose file, brought up for real --------------------------------


def test_compose_testnet_comes_up_scraped_and_goes_away(images: Images, tmp_path: Path) -> None:
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    n = 4
    net_dir = tmp_path / "testnet"
    net_dir.mkdir()
    (net_dir / "genesis.json").write_text('{"chain_id": "fake"}\n')
    for i in range(n):
        node_dir = net_dir / f"node{i}"
        node_dir.mkdir()
        (node_dir / "config.toml").write_text(f"{i}\n")
        compose.grant_container_access(node_dir)
    api_base = free_port_block(n + 1)
    settings = replace(
        compose.ComposeSettings(validators=n),
        host_api_port_base=api_base,
        host_prometheus_port=api_base + n,
        scrape_interval_s=1,
    )
    files = compose.write_compose(net_dir, n, settings=settings)
    assert files.prometheus is not None
    env = {
        "MEDLEDGER_NODE_IMAGE": images.fake_node,
        "MEDLEDGER_PROMETHEUS_IMAGE": images.prometheus,
    }
    with compose_project(tool, files.compose, env) as cmd:
        ids = run([*cmd, "ps", "-q"]).stdout.split()
        assert len(ids) == n + 1

        # Every node: its own config, healthy by the image's HEALTHCHECK, answering
        # on its published loopback port.
        for i in range(n):
            cid = run([*cmd, "ps", "-q", f"node{i}"]).stdout.strip()
            wait_for(lambda cid=cid: health(cid) == "healthy", timeout=180,
                     what=f"node{i} healthy")  # fmt: skip
            r = http_get(f"http://127.0.0.1:{api_base + i}/health")
            assert r is not None and r.status_code == 200

        base = f"http://127.0.0.1:{api_base + n}"
        wait_for(lambda: prom_ready(base), timeout=120, what="Prometheus /-/ready")

        def all_up() -> list[dict[str, Any]] | None:
            targets = prom_targets(base)
            ok = len(targets) == n and all(t["health"] == "up" for t in targets)
            return targets if ok else None

        targets = wait_for(all_up, timeout=120, what=f"{n} targets up")
        assert sorted(t["labels"]["instance"] for t in targets) == [
            f"node{i}:26657" for i in range(n)
        ]

        def heights() -> dict[str, str] | None:
            result = prom_query(base, "medledger_consensus_height")
            got = {s["metric"]["instance"]: s["value"][1] for s in result}
            return got if len(got) == n else None

        # Each node read its own config dir (the fake reports 7 + its index).
        assert wait_for(heights, timeout=60, what="a height from every node") == {
            f"node{i}:26657": str(7 + i) for i in range(n)
        }
        up_query = prom_query(base, 'sum(up{job="medledger"})')
        assert up_query[0]["value"][1] == str(n)
