"""Config loading: defaults, types, paths, and one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import (
    Config,
    ConfigError,
    HostPort,
    PeerAddress,
    load_config,
    parse_config,
    test_defaults,
)


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_empty_file_gives_defaults_with_paths_resolved(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    home = tmp_path.resolve()
    assert cfg.node.data_dir == home / "data"
    assert cfg.node.key_file == home / "node_key.json"
    assert cfg.node.genesis_file == home / "genesis.json"
    assert cfg.p2p == Config().p2p
    assert cfg.api.listen == HostPort("127.0.0.1", 26657)
    assert cfg.storage.backend == "leveldb"
    assert cfg.source == str(tmp_path / "node.toml")


def test_full_file_parses_every_section(tmp_path: Path) -> None:
    key = "ab" * 32
    cfg = load_config(
        write(
            tmp_path,
            f"""
[node]
data_dir = "/var/lib/medledger"
key_file = "keys/node.json"
genesis_file = "../genesis.json"
moniker = "st-mary"

[p2p]
listen = "[::1]:4000"
peers = ["{key}@node1:26656"]
dial_backoff_initial_s = 1
dial_backoff_max_s = 30.5
send_queue_size = 10
gossip_batch_bytes = 4096
private_network = false

[consensus]
timeout_base_s = 1.5
window = 64

[mempool]
max_txs = 100

[api]
listen = "0.0.0.0:8080"
signed_read_max_age_s = 30

[metrics]
enabled = false
listen = "127.0.0.1:9100"

[storage]
backend = "memory"
sync = false

[logging]
level = "warning"
json = true
modules = {{ "node.p2p" = "debug", "consensus" = "error" }}
""",
        )
    )
    assert cfg.node.data_dir == Path("/var/lib/medledger")
    assert cfg.node.key_file == tmp_path.resolve() / "keys/node.json"
    assert cfg.node.moniker == "st-mary"
    assert cfg.p2p.listen == HostPort("::1", 4000)
    assert cfg.p2p.listen.multiaddr() == "/ip6/::1/tcp/4000"
    assert cfg.p2p.peers == (PeerAddress(bytes.fromhex(key), HostPort("node1", 26656)),)
    assert cfg.p2p.dial_backoff_initial_s == 1.0
    assert isinstance(cfg.p2p.dial_backoff_initial_s, float)
    assert cfg.p2p.private_network is False
    assert cfg.consensus.timeout_base_s == 1.5 and cfg.consensus.window == 64
    assert cfg.mempool.max_txs == 100
    assert cfg.api.listen == HostPort("0.0.0.0", 8080)
    assert cfg.metrics.enabled is False and cfg.metrics.listen == HostPort("127.0.0.1", 9100)
    assert cfg.storage.backend == "memory" and cfg.storage.sync is False
    assert cfg.logging.modules == (("consensus", "error"), ("node.p2p", "debug"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[p2p]\nlisen = 1\n", "p2p.lisen: unknown key"),
        ("[p2pp]\n", "p2pp: unknown section"),
        ("p2p = 3\n", "p2p: must be a table"),
        ("[p2p]\ndial_backoff_max_s = -1\n", "p2p.dial_backoff_max_s: must be >= 0.01"),
        ("[p2p]\nsend_queue_size = 1.5\n", "p2p.send_queue_size: must be an integer"),
        ("[p2p]\nsend_queue_size = true\n", "p2p.send_queue_size: must be an integer"),
        ("[p2p]\nprivate_network = 1\n", "p2p.private_network: must be true or false"),
        ("[p2p]\npeers = ['nope']\n", "p2p.peers: expected"),
        ("[p2p]\npeers = 'x'\n", "p2p.peers: must be a list"),
        ("[api]\nlisten = 'localhost'\n", 'api.listen: expected "HOST:PORT"'),
        ("[api]\nlisten = 'h:99999'\n", "api.listen: port must be in 0..65535"),
        ("[api]\nlisten = '::1:80'\n", "api.listen: an IPv6 host must be in brackets"),
        ("[storage]\nbackend = 'rocks'\n", "storage.backend: must be one of 'leveldb', 'memory'"),
        ("[logging]\nlevel = 'loud'\n", "logging.level: must be one of"),
        ("[logging]\nmodules = { x = 'loud' }\n", "logging.modules: must be one of"),
        ("[node]\ndata_dir = ''\n", "node.data_dir: must be a non-empty path"),
        (
            "[p2p]\ndial_backoff_initial_s = 5\ndial_backoff_max_s = 1\n",
            "p2p.dial_backoff_max_s: must be >= p2p.dial_backoff_initial_s",
        ),
        (
            "[consensus]\ntimeout_base_s = 10\ntimeout_cap_s = 1\n",
            "consensus.timeout_cap_s: must be >= consensus.timeout_base_s",
        ),
        (
            "[mempool]\nmax_bytes = 2048\n",
            "mempool.max_bytes: must be >= consensus.max_block_bytes",
        ),
        (
            "[p2p]\nmax_message_bytes = 1048576\n",
            "consensus.max_block_bytes: must be <= p2p.max_message_bytes - 4096",
        ),
        ("[p2p\n", "not valid TOML"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message
    assert info.value.code == "CONFIG_ERROR"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_empty_metrics_listen_means_none() -> None:
    cfg = parse_config({"metrics": {"listen": ""}}, source="x", base_dir=Path("/"))
    assert cfg.metrics.listen is None


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.p2p = cfg.p2p  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.p2p.send_queue_size = 3  # type: ignore[misc]
    replaced = cfg.replace(storage=cfg.storage.__class__(backend="memory"))
    assert replaced.storage.backend == "memory" and cfg.storage.backend == "leveldb"


def test_test_defaults_are_tiny_and_local(tmp_path: Path) -> None:
    cfg = test_defaults(tmp_path)
    assert cfg.consensus.timeout_base_s < Config().consensus.timeout_base_s
    assert cfg.p2p.listen == HostPort("127.0.0.1", 0)
    assert cfg.api.listen.port == 0
    assert cfg.storage.backend == "memory"
    assert cfg.node.key_file == tmp_path / "node_key.json"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", "/ip4/127.0.0.1/tcp/80"),
        ("node3:26656", "/dns/node3/tcp/26656"),
        ("[::]:1", "/ip6/::/tcp/1"),
    ],
)
def test_hostport_multiaddr_and_str_roundtrip(text: str, expected: str) -> None:
    hp = HostPort.parse(text)
    assert hp.multiaddr() == expected
    assert HostPort.parse(str(hp)) == hp


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_example_node_toml_names_every_key() -> None:
    import dataclasses
    import tomllib

    from node.config import _SECTIONS

    data = tomllib.loads((CONFIGS / "node.toml").read_text())
    assert set(data) == set(_SECTIONS)
    for name, section in _SECTIONS.items():
        assert set(data[name]) == {f.name for f in dataclasses.fields(section)}, name
    cfg = load_config(CONFIGS / "node.toml")
    # The example spells out the defaults, apart from paths resolved against configs/.
    assert dataclasses.replace(cfg, node=Config().node, source=Config().source) == Config()


def test_example_genesis_matches_example_config_and_prometheus() -> None:
    from node.compose import render_prometheus_config
    from node.genesis_file import check_consensus_matches, load_genesis

    genesis = load_genesis(CONFIGS / "genesis.json")
    assert len(genesis.validators) == 4 and "EXAMPLE" in genesis.comment
    check_consensus_matches(load_config(CONFIGS / "node.toml"), genesis)
    assert (CONFIGS / "prometheus.yml").read_text() == render_prometheus_config(4)
