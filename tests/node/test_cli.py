"""The ``medledger`` CLI: keys, testnet init, start's checks, status; one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from node.cli import main
from node.config import load_config
from node.genesis_file import load_genesis, peer_id_of
from node.keyfile import load_key_file


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err


def assert_one_line_error(err: str, fragment: str) -> None:
    assert err.startswith("medledger: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert fragment in err, err


def test_keys_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "k.json"
    code, out, err = run(capsys, "keys", "new", "--out", str(out_file))
    assert code == 0, err
    printed = json.loads(out)
    assert printed == {"public_key": load_key_file(out_file).public_key.hex()}
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    code, out, err = run(capsys, "keys", "new", "--out", str(out_file))
    assert code == 2
    assert_one_line_error(err, "already exists")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "keys", "new")
    assert code == 2
    assert_one_line_error(err, "Missing option '--out'")
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert_one_line_error(err, "No such command")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "testnet" in out


def test_testnet_init_writes_a_consistent_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "net"
    code, out, err = run(
        capsys,
        "testnet",
        "init",
        "--validators",
        "4",
        "--out",
        str(out_dir),
        "--base-port",
        "31000",
    )
    assert code == 0, err
    summary = json.loads(out)
    genesis = load_genesis(out_dir / "genesis.json")
    assert len(genesis.validators) == 4 and len(genesis.organisations) == 4
    assert genesis.private_network_key is not None and len(genesis.private_network_key) == 32
    assert [n["public_key"] for n in summary["nodes"]] == [
        v.public_key.hex() for v in genesis.validators
    ]
    ports: list[int] = []
    for i, v in enumerate(genesis.validators):
        home = out_dir / f"node{i}"
        cfg = load_config(home / "config.toml")
        key = load_key_file(cfg.node.key_file)
        assert key.public_key == v.public_key
        assert v.peer_id == peer_id_of(key.public_key)
        assert genesis.organisations[i].public_key == key.public_key
        assert cfg.node.genesis_file.resolve() == (out_dir / "genesis.json").resolve()
        assert cfg.node.data_dir == home.resolve() / "data"
        assert cfg.p2p.listen == v.p2p_address
        assert cfg.p2p.listen.host == "127.0.0.1" and cfg.api.listen.host == "127.0.0.1"
        ports += [cfg.p2p.listen.port, cfg.api.listen.port]
        assert stat.S_IMODE((home / "node_key.json").stat().st_mode) == 0o600
    assert ports == list(range(31000, 31008))

    code, _, err = run(capsys, "testnet", "init", "--validators", "4", "--out", str(out_dir))
    assert code == 2
    assert_one_line_error(err, "already exists")


def test_testnet_init_picks_free_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "testnet", "init", "-n", "1", "--out", str(tmp_path / "n"))
    assert code == 0, err
    cfg = load_config(tmp_path / "n" / "node0" / "config.toml")
    assert cfg.api.listen.port == cfg.p2p.listen.port + 1


def test_testnet_init_docker_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "dock"
    code, _, err = run(capsys, "testnet", "init", "-n", "4", "--out", str(out_dir), "--docker")
    assert code == 0, err
    genesis = load_genesis(out_dir / "genesis.json")
    assert [str(v.p2p_address) for v in genesis.validators] == [f"node{i}:26656" for i in range(4)]
    cfg = load_config(out_dir / "node2" / "config.toml")
    assert str(cfg.p2p.listen) == "0.0.0.0:26656" and str(cfg.api.listen) == "0.0.0.0:26657"
    assert cfg.node.data_dir == Path("/data")
    assert (out_dir / "docker-compose.yml").exists()


def test_start_refuses_bad_files_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = tmp_path / "net"
    assert (
        run(capsys, "testnet", "init", "-n", "4", "--out", str(net), "--base-port", "32000")[0] == 0
    )
    node0 = net / "node0"

    code, _, err = run(capsys, "start", "--config", str(tmp_path / "missing.toml"))
    assert code == 2
    assert_one_line_error(err, "config file not found")

    bad = tmp_path / "bad.toml"
    bad.write_text("[p2p]\nsend_queue_size = 'lots'\n")
    code, _, err = run(capsys, "start", "--config", str(bad))
    assert code == 2
    assert_one_line_error(err, "p2p.send_queue_size: must be an integer")

    (node0 / "node_key.json").chmod(0o644)
    code, _, err = run(capsys, "start", "--config", str(node0 / "config.toml"))
    assert code == 2
    assert_one_line_error(err, "accessible by group or others")
    (node0 / "node_key.json").chmod(0o600)

    (node0 / "node_key.json").unlink()
    assert run(capsys, "keys", "new", "--out", str(node0 / "node_key.json"))[0] == 0
    code, _, err = run(capsys, "start", "--config", str(node0 / "config.toml"))
    assert code == 2
    assert_one_line_error(err, "is not a validator")

    cfg1 = net / "node1" / "config.toml"
    cfg1.write_text(cfg1.read_text() + "\n[consensus]\nwindow = 7\n")
    code, _, err = run(capsys, "start", "--config", str(cfg1))
    assert code == 2
    assert_one_line_error(err, "consensus.window: is 7 but genesis")


class _StatusHandler(BaseHTTPRequestHandler):
    status = 200
    body: dict[str, object] = {}

    def do_GET(self) -> None:
        data = json.dumps(self.body if self.path == "/v1/status" else {}).encode()
        self.send_response(self.status if self.path == "/v1/status" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def status_server() -> Iterator[tuple[str, type[_StatusHandler]]]:
    class Handler(_StatusHandler):
        pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Handler
    finally:
        server.shutdown()
        server.server_close()


def test_status_prints_node_json(
    status_server: tuple[str, type[_StatusHandler]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, handler = status_server
    handler.body = {"chain_id": "c", "height": 7}
    code, out, err = run(capsys, "status", "--node", url)
    assert code == 0, err
    assert json.loads(out) == {"chain_id": "c", "height": 7}

    handler.status = 503
    handler.body = {"error": {"code": "NOT_READY", "message": "catching up"}}
    code, _, err = run(capsys, "status", "--node", url + "/")
    assert code == 1
    assert_one_line_error(err, "HTTP 503 NOT_READY catching up")


def test_status_unreachable_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--node", "http://127.0.0.1:1", "--timeout", "2")
    assert code == 1
    assert_one_line_error(err, "cannot reach http://127.0.0.1:1/v1/status")


def test_python_dash_m_node_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node", "start", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == f"medledger: error: {tmp_path / 'nope.toml'}: config file not found\n"
