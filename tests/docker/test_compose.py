"""node/compose.py: the compose file and Prometheus config it writes.

The fast tests read the text back with a strict reader of the YAML subset the
emitter promises; the docker-marked one asks the real compose tool to accept it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import compose
from node.compose import CHECKED_IN, ComposeSettings, YamlValue

from .helpers import REPO, compose_command, docker_unavailable_reason, parse_yaml_subset, run


def _services(doc: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = doc["services"]
    return services


@pytest.mark.parametrize("n", [1, 4, 7])
def test_compose_has_every_node_with_its_volume_network_and_ports(n: int) -> None:
    settings = ComposeSettings(validators=n, host_api_port_base=30000, host_prometheus_port=29000)
    doc = parse_yaml_subset(compose.render_compose(settings))

    services = _services(doc)
    assert list(services) == [f"node{i}" for i in range(n)] + ["prometheus"]
    assert list(doc["volumes"]) == [f"node{i}-data" for i in range(n)]
    assert doc["networks"] == {"medledger": {"driver": "bridge"}}
    published: list[str] = []
    for i in range(n):
        svc = services[f"node{i}"]
        assert svc["hostname"] == f"node{i}"
        assert svc["image"] == "${MEDLEDGER_NODE_IMAGE:-medledger-node:dev}"
        assert svc["command"] == ["start", "--config", "/config/config.toml"]
        assert svc["networks"] == ["medledger"]
        assert svc["volumes"] == [
            f"./node{i}:/config:ro",
            "./genesis.json:/genesis.json:ro",
            f"node{i}-data:/data",
        ]
        assert svc["ports"] == [f"127.0.0.1:{30000 + i}:26657"]
        published += svc["ports"]
    prom = services["prometheus"]
    assert prom["ports"] == ["127.0.0.1:29000:9090"]
    assert prom["volumes"] == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    assert prom["networks"] == ["medledger"]
    published += prom["ports"]
    # Everything is published on loopback only, and no two services share a host port.
    assert all(p.startswith("127.0.0.1:") for p in published)
    assert len({p.split(":")[1] for p in published}) == len(published)


@pytest.mark.parametrize("n", [1, 4, 10])
def test_prometheus_config_scrapes_every_node(n: int) -> None:
    doc = parse_yaml_subset(compose.render_prometheus_config(n))
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "medledger"
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"node{i}:26657" for i in range(n)]
    assert doc["global"]["scrape_interval"] == "5s"


def test_prometheus_targets_are_the_compose_services() -> None:
    """Every scrape target resolves to a node service on the shared network."""
    n = 4
    services = _services(parse_yaml_subset(compose.render_compose(ComposeSettings(n))))
    prom = parse_yaml_subset(compose.render_prometheus_config(n))
    for target in prom["scrape_configs"][0]["static_configs"][0]["targets"]:
        host, _, port = target.partition(":")
        assert host in services
        assert services[host]["ports"][0].endswith(f":{port}")
        assert services[host]["networks"] == services["prometheus"]["networks"]


def test_checked_in_compose_file_is_the_generated_one() -> None:
    path = REPO / "testnet" / "docker-compose.yml"
    expected = compose.render_compose(CHECKED_IN)
    assert path.read_text(encoding="utf-8") == expected, (
        "testnet/docker-compose.yml is stale: "
        "python -m node.compose --checked-in > testnet/docker-compose.yml"
    )
    doc = parse_yaml_subset(expected)
    assert len(doc["services"]) == 5
    assert doc["services"]["node3"]["volumes"][0] == "./out/node3:/config:ro"
    assert doc["services"]["prometheus"]["volumes"] == [
        "../configs/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    ]


def test_write_compose_writes_both_files(tmp_path: Path) -> None:
    files = compose.write_compose(tmp_path / "net", 3)
    assert files.compose == tmp_path / "net" / "docker-compose.yml"
    assert files.prometheus == tmp_path / "net" / "prometheus.yml"
    doc = parse_yaml_subset(files.compose.read_text())
    assert list(_services(doc)) == ["node0", "node1", "node2", "prometheus"]
    prom = parse_yaml_subset(files.prometheus.read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"][-1] == "node2:26657"
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == [
        "docker-compose.yml",
        "prometheus.yml",
    ]


def test_write_compose_leaves_a_foreign_prometheus_config_alone(tmp_path: Path) -> None:
    files = compose.write_compose(tmp_path, 4, settings=CHECKED_IN)
    assert files.prometheus is None
    assert files.compose.read_text() == compose.render_compose(CHECKED_IN)
    assert [p.name for p in tmp_path.iterdir()] == ["docker-compose.yml"]


def test_output_is_deterministic() -> None:
    s = ComposeSettings(validators=5)
    assert compose.render_compose(s) == compose.render_compose(ComposeSettings(validators=5))
    assert compose.render_prometheus_config(5) == compose.render_prometheus_config(5)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (ComposeSettings(validators=0), "at least 1"),
        (ComposeSettings(validators=4, host_api_port_base=65534), "do not fit"),
        (ComposeSettings(validators=4, host_api_port_base=9088), "collides"),
        (ComposeSettings(validators=4, network="Bad Name"), "network name"),
        (ComposeSettings(validators=4, host_prometheus_port=70000), "out of range"),
    ],
)
def test_bad_settings_are_rejected(settings: ComposeSettings, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compose.render_compose(settings)


def test_module_main_prints_the_checked_in_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert compose.main(["--checked-in"]) == 0
    assert capsys.readouterr().out == compose.render_compose(CHECKED_IN)
    assert compose.main(["--prometheus", "--validators", "2"]) == 0
    assert capsys.readouterr().out == compose.render_prometheus_config(2)
    assert compose.main(["--validators", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err


# Any document of the emitter's shape reads back unchanged: strings with quotes,
# colons, newlines, non-ASCII and YAML 1.1 words ("yes", "null") included.
_scalars = st.one_of(st.text(max_size=12), st.integers(-(10**9), 10**9), st.booleans())
_keys = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["yes", "No", "null", "on", "a.b-c", "_x", "9lives", "k: v"]),
)


def _mappings(children: st.SearchStrategy[YamlValue]) -> st.SearchStrategy[YamlValue]:
    return st.dictionaries(_keys, children, max_size=4)


_values: st.SearchStrategy[YamlValue] = st.recursive(
    _scalars,
    lambda children: st.one_of(
        _mappings(children),
        st.lists(st.one_of(_scalars, _mappings(children)), max_size=4),
    ),
    max_leaves=20,
)


@given(st.dictionaries(_keys, _values, min_size=1, max_size=5))
def test_yaml_round_trip(document: dict[str, YamlValue]) -> None:
    assert parse_yaml_subset(compose.to_yaml(document)) == document


@pytest.mark.docker
def test_compose_tool_accepts_generated_files(tmp_path: Path) -> None:
    reason = docker_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    tool = compose_command()
    if tool is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    compose.write_compose(tmp_path, 4)
    done = run([*tool, "-f", str(tmp_path / "docker-compose.yml"), "config", "--services"])
    assert done.stdout.split() == sorted(["node0", "node1", "node2", "node3", "prometheus"])
    checked_in = REPO / "testnet" / "docker-compose.yml"
    done = run([*tool, "-f", str(checked_in), "config", "--volumes"])
    assert done.stdout.split() == ["node0-data", "node1-data", "node2-data", "node3-data"]


def test_grant_container_access_without_root_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_dir = tmp_path / "node0"
    node_dir.mkdir()
    (node_dir / "node_key.json").write_text("{}")
    before = (node_dir / "node_key.json").stat()
    monkeypatch.setattr(compose.os, "geteuid", lambda: 1000)
    assert compose.grant_container_access(node_dir) is False
    after = (node_dir / "node_key.json").stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_grant_container_access_as_root_hands_the_tree_to_the_node_uid(tmp_path: Path) -> None:
    node_dir = tmp_path / "node0"
    (node_dir / "sub").mkdir(parents=True)
    (node_dir / "node_key.json").write_text("{}")
    (node_dir / "node_key.json").chmod(0o600)
    assert compose.grant_container_access(node_dir) is True
    for p in (node_dir, node_dir / "sub", node_dir / "node_key.json"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (compose.NODE_UID, compose.NODE_GID)
    assert (node_dir / "node_key.json").stat().st_mode & 0o777 == 0o600
