"""Docker compose files for a testnet of N validators, plus the Prometheus config.

``medledger testnet init --docker`` writes the node directories; this module
writes the ``docker-compose.yml`` that runs them and the ``prometheus.yml`` that
scrapes them. The checked-in ``testnet/docker-compose.yml`` is this module's
output for 4 validators (``render_compose(CHECKED_IN)``), and a test keeps the
two equal, so regenerate it after a change here::

    python -m node.compose --checked-in > testnet/docker-compose.yml

The YAML is emitted as text, without a YAML library: the documents are small
and fixed in shape, every string is written JSON-quoted (a JSON string is a valid
YAML double-quoted scalar), and keys come out in the order built here, so the
output is byte-for-byte deterministic and needs no extra dependency.

Container layout (the contract with ``testnet init --docker``):

* service ``nodeI`` (also its host name on the compose network) runs
  ``medledger start --config /config/config.toml``;
* ``/config`` is the node's directory ``nodeI/`` (config.toml, keys), mounted
  read-only; ``/genesis.json`` is the network's genesis file, read-only; so a
  config that names its genesis as ``../genesis.json`` relative to itself, or
  as ``/genesis.json``, finds it;
* ``/data`` is the node's named volume ``nodeI-data``: the config's data
  directory must be ``/data`` (the config directory is read-only);
* the API (with ``/health``, ``/ready`` and ``/metrics``) listens on
  ``0.0.0.0:26657`` and libp2p on ``0.0.0.0:26656``; peers are reached as
  ``nodeJ:26656``;
* the node runs as uid/gid ``NODE_UID``/``NODE_GID`` (10001), so the files in
  ``nodeI/`` must be readable by that uid (``chown`` them when running as
  root, see ``grant_container_access``);
* each node's API is published on ``127.0.0.1`` only, at
  ``host_api_port_base + I``; Prometheus at ``127.0.0.1:9090``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

CONTAINER_API_PORT = 26657
CONTAINER_P2P_PORT = 26656
CONTAINER_CONFIG_DIR = "/config"
CONTAINER_CONFIG_FILE = "/config/config.toml"
CONTAINER_GENESIS_FILE = "/genesis.json"
CONTAINER_DATA_DIR = "/data"
PROMETHEUS_PORT = 9090
NODE_UID = 10001
NODE_GID = 10001

DEFAULT_NODE_IMAGE = "medledger-node:dev"
DEFAULT_PROMETHEUS_IMAGE = "medledger-prometheus:dev"
COMPOSE_FILE = "docker-compose.yml"
PROMETHEUS_FILE = "prometheus.yml"

# A YAML value as emitted here: JSON-like, with ordered mappings.
YamlValue: TypeAlias = str | int | bool | list["YamlValue"] | dict[str, "YamlValue"]


@dataclass(frozen=True)
class ComposeSettings:
    """Everything that varies between generated compose files.

    Paths are as written into the compose file, relative to the directory the
    compose file lives in (that is how compose resolves them).
    """

    validators: int
    nodes_dir: str = "."
    genesis: str = "./genesis.json"
    prometheus_config: str = f"./{PROMETHEUS_FILE}"
    host_api_port_base: int = 27657
    host_prometheus_port: int = PROMETHEUS_PORT
    node_image: str = DEFAULT_NODE_IMAGE
    prometheus_image: str = DEFAULT_PROMETHEUS_IMAGE
    network: str = "medledger"
    scrape_interval_s: int = 5
    stop_grace_period_s: int = 30

    def validate(self) -> None:
        """Reject settings that would write a compose file that cannot run."""
        if self.validators < 1:
            raise ValueError(f"validators must be at least 1, got {self.validators}")
        last = self.host_api_port_base + self.validators - 1
        if self.host_api_port_base < 1 or last > 65535:
            raise ValueError(
                f"host API ports {self.host_api_port_base}..{last} do not fit in 1..65535"
            )
        if not 1 <= self.host_prometheus_port <= 65535:
            raise ValueError(f"host Prometheus port {self.host_prometheus_port} out of range")
        if self.host_api_port_base <= self.host_prometheus_port <= last:
            raise ValueError(
                f"host Prometheus port {self.host_prometheus_port} collides with a node API port"
            )
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", self.network):
            raise ValueError(f"network name {self.network!r} is not a valid compose name")
        if self.scrape_interval_s < 1 or self.stop_grace_period_s < 1:
            raise ValueError("scrape_interval_s and stop_grace_period_s must be positive")


# The checked-in testnet/docker-compose.yml: node directories written by
# `medledger testnet init --docker --validators 4 --out testnet/out`, and the
# example Prometheus config from configs/.
CHECKED_IN = ComposeSettings(
    validators=4,
    nodes_dir="./out",
    genesis="./out/genesis.json",
    prometheus_config="../configs/prometheus.yml",
)


def service_name(index: int) -> str:
    """The compose service name of validator ``index``, also its host name."""
    return f"node{index}"


def volume_name(index: int) -> str:
    return f"node{index}-data"


def host_api_port(settings: ComposeSettings, index: int) -> int:
    """The 127.0.0.1 port on the host where validator ``index``'s API is published."""
    return settings.host_api_port_base + index


def _join(base: str, name: str) -> str:
    base = base.rstrip("/") or "."
    return f"{base}/{name}"


def _env_image(var: str, default: str) -> str:
    # Compose interpolates ${VAR:-default}: a user with a registry swaps images
    # without editing the file.
    return f"${{{var}:-{default}}}"


def compose_document(settings: ComposeSettings) -> dict[str, YamlValue]:
    """The compose file as plain data (what ``render_compose`` writes)."""
    settings.validate()
    services: dict[str, YamlValue] = {}
    volumes: dict[str, YamlValue] = {}
    for i in range(settings.validators):
        name = service_name(i)
        services[name] = {
            "image": _env_image("MEDLEDGER_NODE_IMAGE", settings.node_image),
            "hostname": name,
            "command": ["start", "--config", CONTAINER_CONFIG_FILE],
            "environment": {"MEDLEDGER_API_PORT": str(CONTAINER_API_PORT)},
            "volumes": [
                f"{_join(settings.nodes_dir, name)}:{CONTAINER_CONFIG_DIR}:ro",
                f"{settings.genesis}:{CONTAINER_GENESIS_FILE}:ro",
                f"{volume_name(i)}:{CONTAINER_DATA_DIR}",
            ],
            "ports": [f"127.0.0.1:{host_api_port(settings, i)}:{CONTAINER_API_PORT}"],
            "networks": [settings.network],
            "stop_grace_period": f"{settings.stop_grace_period_s}s",
        }
        volumes[volume_name(i)] = {}
    services["prometheus"] = {
        "image": _env_image("MEDLEDGER_PROMETHEUS_IMAGE", settings.prometheus_image),
        "hostname": "prometheus",
        "volumes": [f"{settings.prometheus_config}:/etc/prometheus/prometheus.yml:ro"],
        "ports": [f"127.0.0.1:{settings.host_prometheus_port}:{PROMETHEUS_PORT}"],
        "networks": [settings.network],
    }
    return {
        "services": services,
        "volumes": volumes,
        "networks": {settings.network: {"driver": "bridge"}},
    }


def prometheus_document(
    validators: int,
    *,
    scrape_interval_s: int = 5,
    port: int = CONTAINER_API_PORT,
) -> dict[str, YamlValue]:
    """A Prometheus config scraping ``/metrics`` of every ``nodeI:port``."""
    if validators < 1:
        raise ValueError(f"validators must be at least 1, got {validators}")
    targets: list[YamlValue] = [f"{service_name(i)}:{port}" for i in range(validators)]
    return {
        "global": {
            "scrape_interval": f"{scrape_interval_s}s",
            "evaluation_interval": f"{scrape_interval_s}s",
        },
        "scrape_configs": [
            {
                "job_name": "medledger",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }
        ],
    }


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
# Words a YAML 1.1 reader (PyYAML, docker-compose v1) turns into booleans or null.
_YAML11_SPECIAL = frozenset(["y", "n", "yes", "no", "true", "false", "on", "off", "null"])


def _scalar(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_SPECIAL
    return key if plain else json.dumps(key)


def _emit(value: YamlValue, indent: int, out: list[str]) -> None:
    """Append the block-style lines of a mapping or sequence at ``indent``."""
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{_key(key)}:")
                _emit(item, indent + 2, out)
            elif isinstance(item, dict):
                out.append(f"{pad}{_key(key)}: {{}}")
            elif isinstance(item, list):
                out.append(f"{pad}{_key(key)}: []")
            else:
                out.append(f"{pad}{_key(key)}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                # "- " followed by the mapping, its first key on the dash line.
                sub: list[str] = []
                _emit(item, indent + 2, sub)
                out.append(f"{pad}- {sub[0].lstrip()}")
                out.extend(sub[1:])
            elif isinstance(item, list) and item:
                raise ValueError("nested sequences are not emitted")
            elif isinstance(item, dict):
                out.append(f"{pad}- {{}}")
            elif isinstance(item, list):
                out.append(f"{pad}- []")
            else:
                out.append(f"{pad}- {_scalar(item)}")
    else:
        raise TypeError(f"top-level YAML value must be a mapping or sequence, got {value!r}")


def to_yaml(document: dict[str, YamlValue]) -> str:
    """Block-style YAML text for ``document``; deterministic for equal input."""
    lines: list[str] = []
    _emit(document, 0, lines)
    return "\n".join(lines) + "\n"


def _compose_header(settings: ComposeSettings) -> str:
    n = settings.validators
    last_port = host_api_port(settings, n - 1)
    return f"""\
# medledger testnet: {n} validators and a Prometheus that scrapes them.
# Generated by node/compose.py; do not edit by hand.
#
# Needs: the images (bash testnet/images.sh builds medledger-node:dev and
# medledger-prometheus:dev locally; or set MEDLEDGER_NODE_IMAGE and
# MEDLEDGER_PROMETHEUS_IMAGE, e.g. to prom/prometheus), and the node directories
# {_join(settings.nodes_dir, "node0")} .. {_join(settings.nodes_dir, f"node{n - 1}")} \
with {settings.genesis}, as written by
# `medledger testnet init --docker` (the init command must have run first: compose
# creates an empty directory for a missing bind-mount source).
#
#   docker compose -f <this file> up -d      (or: docker-compose -f <this file> up -d)
#   node APIs:  http://127.0.0.1:{settings.host_api_port_base} .. http://127.0.0.1:{last_port}
#   Prometheus: http://127.0.0.1:{settings.host_prometheus_port}
#   docker compose -f <this file> down -v    (removes containers, network and volumes)
"""


def render_compose(settings: ComposeSettings) -> str:
    """The full text of a docker-compose.yml for ``settings``."""
    return _compose_header(settings) + to_yaml(compose_document(settings))


def render_prometheus_config(
    validators: int, *, scrape_interval_s: int = 5, port: int = CONTAINER_API_PORT
) -> str:
    """The full text of a prometheus.yml scraping every node of a compose testnet."""
    header = (
        f"# Prometheus for a {validators}-validator medledger compose testnet:\n"
        "# scrapes /metrics of every node by its compose service name.\n"
        "# Generated by node/compose.py.\n"
    )
    doc = prometheus_document(validators, scrape_interval_s=scrape_interval_s, port=port)
    return header + to_yaml(doc)


@dataclass(frozen=True)
class ComposeFiles:
    """The files ``write_compose`` wrote."""

    compose: Path
    prometheus: Path | None


def write_compose(
    out_dir: Path,
    n_validators: int,
    *,
    settings: ComposeSettings | None = None,
    write_prometheus_config: bool = True,
) -> ComposeFiles:
    """Write ``out_dir/docker-compose.yml`` for ``n_validators`` nodes.

    By default the node directories and genesis are expected beside the compose
    file (the layout ``testnet init --docker --out DIR`` writes) and a matching
    ``out_dir/prometheus.yml`` is written too. Pass ``settings`` to change ports,
    images or paths; its ``validators`` is replaced by ``n_validators``. When
    ``settings.prometheus_config`` points elsewhere, that file is the caller's
    and only the compose file is written.
    """
    s = replace(settings or ComposeSettings(validators=n_validators), validators=n_validators)
    s.validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    compose_path = out_dir / COMPOSE_FILE
    _write_text(compose_path, render_compose(s))
    prometheus_path: Path | None = None
    if write_prometheus_config and s.prometheus_config == f"./{PROMETHEUS_FILE}":
        prometheus_path = out_dir / PROMETHEUS_FILE
        _write_text(
            prometheus_path,
            render_prometheus_config(n_validators, scrape_interval_s=s.scrape_interval_s),
        )
    return ComposeFiles(compose=compose_path, prometheus=prometheus_path)


def _write_text(path: Path, text: str) -> None:
    # Write beside and rename, so a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def grant_container_access(node_dir: Path) -> bool:
    """Make ``node_dir`` readable by the container's user, if we are allowed to.

    Key files are 0600; the node in the container runs as ``NODE_UID``. As root
    we hand the directory to that uid (modes stay as they are). Otherwise we
    cannot, and return False: the caller should tell the operator to run the
    containers with ``user:`` set to their own uid, or to chown the files.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    for root, dirs, files in os.walk(node_dir):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), NODE_UID, NODE_GID)
    os.chown(node_dir, NODE_UID, NODE_GID)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.compose``: print a compose file or prometheus config."""
    parser = argparse.ArgumentParser(prog="python -m node.compose", description=main.__doc__)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument(
        "--checked-in", action="store_true", help="the settings of testnet/docker-compose.yml"
    )
    parser.add_argument("--prometheus", action="store_true", help="print prometheus.yml instead")
    args = parser.parse_args(argv)
    try:
        if args.prometheus:
            sys.stdout.write(render_prometheus_config(args.validators))
        else:
            settings = CHECKED_IN if args.checked_in else ComposeSettings(args.validators)
            settings = replace(settings, validators=args.validators)
            sys.stdout.write(render_compose(settings))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
