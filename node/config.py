"""The node's configuration: one frozen, typed object, loaded and validated once.

A TOML file has one table per subsystem (``[node]``, ``[p2p]``, ``[consensus]``,
``[mempool]``, ``[api]``, ``[metrics]``, ``[storage]``, ``[logging]``). Every key
has a default, so an empty file is a valid config. Like CometBFT's
``config/config.go`` each section validates itself, and every error names the
file, the key as ``section.key`` and the reason in one line: an operator with a
typo gets ``node.toml: p2p.dial_backoff_max_s: must be >= 0.01, got -1`` rather
than a traceback, and an unknown key is an error rather than silently ignored
(a misspelt key is the commonest config bug).

Relative paths are resolved against the directory of the config file, so a
node's home can be moved as a whole. Durations are seconds (TOML int or
float); they never enter anything hashed or signed.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ledger.errors import LedgerError

__all__ = [
    "ApiConfig",
    "Config",
    "ConfigError",
    "ConsensusConfig",
    "HostPort",
    "LoggingConfig",
    "MempoolConfig",
    "MetricsConfig",
    "NodeConfig",
    "P2PConfig",
    "PeerAddress",
    "StorageConfig",
    "load_config",
    "parse_config",
    "test_defaults",
]


class ConfigError(LedgerError):
    """A config, key or genesis file that cannot be used; the message is one line."""

    code = "CONFIG_ERROR"


# --- value types -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPort:
    """A TCP endpoint written ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse ``HOST:PORT``; raises ``ValueError`` with a reason."""
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f'expected "HOST:PORT", got {text!r}')
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"an IPv6 host must be in brackets, got {text!r}")
        if not port_text.isdigit():
            raise ValueError(f"port must be a number, got {port_text!r}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        return cls(host, port)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def multiaddr(self) -> str:
        """The libp2p TCP multiaddr of this endpoint (``/dns`` for host names)."""
        if self.is_ipv6:
            proto = "ip6"
        elif all(part.isdigit() for part in self.host.split(".")) and self.host.count(".") == 3:
            proto = "ip4"
        else:
            proto = "dns"
        return f"/{proto}/{self.host}/tcp/{self.port}"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """``PUBKEYHEX@HOST:PORT``: where to dial one validator, overriding genesis."""

    public_key: bytes
    address: HostPort

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        key_hex, sep, addr = text.partition("@")
        if not sep:
            raise ValueError(f'expected "PUBKEYHEX@HOST:PORT", got {text!r}')
        try:
            key = bytes.fromhex(key_hex)
        except ValueError:
            raise ValueError(f"public key is not hex: {key_hex[:16]!r}") from None
        if len(key) != 32 or key_hex != key_hex.lower():
            raise ValueError("public key must be 64 lowercase hex digits")
        return cls(key, HostPort.parse(addr))

    def __str__(self) -> str:
        return f"{self.public_key.hex()}@{self.address}"


LogLevel = Literal["debug", "info", "warning", "error", "critical"]
_LOG_LEVELS = typing.get_args(LogLevel)


def _limits(lo: float | None = None, hi: float | None = None) -> dict[str, Any]:
    return {"min": lo, "max": hi}


# --- sections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Where the node keeps its files, and how it names itself in logs."""

    data_dir: Path = Path("data")
    key_file: Path = Path("node_key.json")
    genesis_file: Path = Path("genesis.json")
    moniker: str = "medledger-node"


@dataclass(frozen=True, slots=True)
class P2PConfig:
    """libp2p: listening address, peers, direct-stream and gossip limits."""

    listen: HostPort = HostPort("0.0.0.0", 26656)
    #: Dial overrides ``PUBKEYHEX@HOST:PORT``; validators not named here are
    #: dialled at the ``p2p_address`` genesis gives them.
    peers: tuple[PeerAddress, ...] = ()
    dial_backoff_initial_s: float = field(default=0.2, metadata=_limits(0.001, 60))
    dial_backoff_max_s: float = field(default=10.0, metadata=_limits(0.01, 3600))
    #: A dial (TCP + private network + Noise + yamux) that takes longer fails.
    dial_timeout_s: float = field(default=10.0, metadata=_limits(0.1, 600))
    #: Largest direct-stream frame (PBFT message, state-transfer chunk).
    max_message_bytes: int = field(default=8 * 1024 * 1024, metadata=_limits(1024, 256 << 20))
    #: Frames queued per peer and protocol before the oldest is dropped (and counted).
    send_queue_size: int = field(default=1024, metadata=_limits(1, 1 << 20))
    #: Frames delivered to the owner before the reader blocks (backpressure).
    receive_queue_size: int = field(default=4096, metadata=_limits(1, 1 << 20))
    #: A gossiped tx batch is sent when it reaches this size ...
    gossip_batch_bytes: int = field(default=64 * 1024, metadata=_limits(256, 1000 * 1024))
    #: ... or when its oldest tx has waited this long (at 4 validators; n validators
    #: wait n (n - 1) / 12 times as long: see node.mempool.gossip_interval_for).
    gossip_batch_interval_s: float = field(default=0.05, metadata=_limits(0.001, 10))
    #: Gossip batches in flight before ``publish_batch`` waits (backpressure).
    gossip_publish_queue: int = field(default=16, metadata=_limits(1, 1024))
    #: Use the network's pre-shared key from genesis (libp2p private network).
    private_network: bool = True


#: Room a PRE-PREPARE needs beyond its block: envelope, keys, signature, digests.
BLOCK_FRAME_OVERHEAD = 4096


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """PBFT timing and block limits.

    ``window``, ``checkpoint_interval``, ``max_block_txs`` and
    ``max_block_bytes`` must agree across the network; see
    :func:`node.genesis_file.check_consensus_matches`.
    """

    timeout_base_s: float = field(default=2.0, metadata=_limits(0.001, 3600))
    timeout_backoff: float = field(default=2.0, metadata=_limits(1.0, 16.0))
    timeout_cap_s: float = field(default=60.0, metadata=_limits(0.001, 86400))
    window: int = field(default=4, metadata=_limits(1, 1 << 20))
    checkpoint_interval: int = field(default=100, metadata=_limits(1, 1 << 20))
    max_block_txs: int = field(default=2000, metadata=_limits(1, 1 << 20))
    max_block_bytes: int = field(default=4 * 1024 * 1024, metadata=_limits(1024, 256 << 20))
    #: The primary waits at most this long for a block to fill before proposing
    #: (scaled up above 4 validators: see node.ledger_app.proposal_spacing_for).
    block_interval_s: float = field(default=0.2, metadata=_limits(0.0, 60))


@dataclass(frozen=True, slots=True)
class MempoolConfig:
    max_txs: int = field(default=50_000, metadata=_limits(1, 10_000_000))
    max_bytes: int = field(default=256 * 1024 * 1024, metadata=_limits(1024, 1 << 40))
    #: Wall time the post-block recheck may take before the rest is deferred.
    recheck_budget_s: float = field(default=0.1, metadata=_limits(0.0, 60))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: HostPort = HostPort("127.0.0.1", 26657)
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata=_limits(1024, 1 << 30))
    #: A signed read older (or newer) than this is refused as possibly replayed.
    signed_read_max_age_s: float = field(default=60.0, metadata=_limits(1.0, 3600))
    #: A request body must arrive whole within this time of its headers; else
    #: HTTP 408 and the connection is closed (a slow sender cannot hold one).
    body_timeout_s: float = field(default=30.0, metadata=_limits(0.1, 3600))
    #: A new connection must send its request headers, and an idle keep-alive
    #: connection its next request, within this time; else it is closed.
    keep_alive_timeout_s: float = field(default=5.0, metadata=_limits(0.1, 600))
    #: A connection that sends nothing for this long is closed, whatever it is
    #: doing: keep it above the slowest answer (a request still being handled
    #: when it fires loses its answer).
    read_timeout_s: float = field(default=60.0, metadata=_limits(1.0, 3600))


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    #: ``HOST:PORT`` for a separate metrics listener; ``None`` serves
    #: ``/metrics`` on the API listener.
    listen: HostPort | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    backend: Literal["leveldb", "memory"] = "leveldb"
    #: fsync every committed height's batch (turn off only in tests).
    sync: bool = True


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    json: bool = False
    #: Per-module levels, e.g. ``{"node.p2p" = "debug"}``; sorted by module.
    modules: tuple[tuple[str, LogLevel], ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole node configuration. ``source`` is the file it came from."""

    node: NodeConfig = NodeConfig()
    p2p: P2PConfig = P2PConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    mempool: MempoolConfig = MempoolConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    storage: StorageConfig = StorageConfig()
    logging: LoggingConfig = LoggingConfig()
    source: str = "<defaults>"

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced (frozen objects are never patched)."""
        return dataclasses.replace(self, **sections)


_SECTIONS: dict[str, type[Any]] = {
    "node": NodeConfig,
    "p2p": P2PConfig,
    "consensus": ConsensusConfig,
    "mempool": MempoolConfig,
    "api": ApiConfig,
    "metrics": MetricsConfig,
    "storage": StorageConfig,
    "logging": LoggingConfig,
}


def test_defaults(base_dir: Path | None = None) -> Config:
    """Defaults for tests: tiny timeouts, in-memory storage, loopback, free ports.

    Like CometBFT's ``TestConfig()``: everything a unit or in-process test
    needs to run in milliseconds. Port 0 lets the OS pick free ports.
    """
    base = base_dir or Path(".")
    return Config(
        node=NodeConfig(
            data_dir=base / "data",
            key_file=base / "node_key.json",
            genesis_file=base / "genesis.json",
            moniker="test-node",
        ),
        p2p=P2PConfig(
            listen=HostPort("127.0.0.1", 0),
            dial_backoff_initial_s=0.01,
            dial_backoff_max_s=0.2,
            dial_timeout_s=2.0,
            send_queue_size=256,
            receive_queue_size=256,
            gossip_batch_interval_s=0.005,
            private_network=False,
        ),
        consensus=ConsensusConfig(
            timeout_base_s=0.2,
            timeout_backoff=1.5,
            timeout_cap_s=2.0,
            window=50,
            checkpoint_interval=10,
            max_block_txs=500,
            max_block_bytes=1024 * 1024,
            block_interval_s=0.01,
        ),
        mempool=MempoolConfig(max_txs=10_000, max_bytes=64 * 1024 * 1024, recheck_budget_s=0.05),
        api=ApiConfig(listen=HostPort("127.0.0.1", 0)),
        metrics=MetricsConfig(),
        storage=StorageConfig(backend="memory", sync=False),
        logging=LoggingConfig(level="debug"),
        source="<test defaults>",
    )


test_defaults.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# --- loading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a TOML config file; raises :class:`ConfigError`."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(p), base_dir=p.resolve().parent)


def parse_config(data: Mapping[str, Any], *, source: str, base_dir: Path) -> Config:
    """Build a :class:`Config` from parsed TOML, resolving paths against ``base_dir``."""
    sections: dict[str, Any] = {}
    for name, value in data.items():
        section_type = _SECTIONS.get(name)
        if section_type is None:
            known = ", ".join(_SECTIONS)
            raise ConfigError(f"{source}: {name}: unknown section (known: {known})")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name}: must be a table [{name}]")
        sections[name] = _parse_section(section_type, name, value, source, base_dir)
    node = sections.get("node", NodeConfig())
    sections["node"] = dataclasses.replace(  # defaults are relative to the file too
        node,
        data_dir=_resolve(node.data_dir, base_dir),
        key_file=_resolve(node.key_file, base_dir),
        genesis_file=_resolve(node.genesis_file, base_dir),
    )
    config = Config(source=source, **sections)
    if config.p2p.dial_backoff_max_s < config.p2p.dial_backoff_initial_s:
        raise ConfigError(
            f"{source}: p2p.dial_backoff_max_s: must be >= p2p.dial_backoff_initial_s"
        )
    if config.consensus.timeout_cap_s < config.consensus.timeout_base_s:
        raise ConfigError(f"{source}: consensus.timeout_cap_s: must be >= consensus.timeout_base_s")
    if config.mempool.max_bytes < config.consensus.max_block_bytes:
        raise ConfigError(
            f"{source}: mempool.max_bytes: must be >= consensus.max_block_bytes "
            f"({config.consensus.max_block_bytes})"
        )
    if config.consensus.max_block_bytes + BLOCK_FRAME_OVERHEAD > config.p2p.max_message_bytes:
        # A PRE-PREPARE carries one whole block: it must fit one frame, or every
        # proposal would be dropped by the transport and nothing would commit.
        raise ConfigError(
            f"{source}: consensus.max_block_bytes: must be <= p2p.max_message_bytes - "
            f"{BLOCK_FRAME_OVERHEAD} ({config.p2p.max_message_bytes - BLOCK_FRAME_OVERHEAD})"
        )
    if config.p2p.gossip_batch_bytes > config.p2p.max_message_bytes:
        raise ConfigError(f"{source}: p2p.gossip_batch_bytes: must be <= p2p.max_message_bytes")
    return config


def _resolve(path: Path, base_dir: Path) -> Path:
    return path if path.is_absolute() else base_dir / path


def _parse_section(
    section_type: type[Any], section: str, table: dict[str, Any], source: str, base_dir: Path
) -> Any:
    hints = typing.get_type_hints(section_type)
    fields = {f.name: f for f in dataclasses.fields(section_type)}
    values: dict[str, Any] = {}
    for key, raw in table.items():
        f = fields.get(key)
        where = f"{source}: {section}.{key}"
        if f is None:
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
        try:
            value = _convert(hints[key], raw, base_dir)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo:
                raise ValueError(f"must be >= {lo}, got {raw!r}")
            if hi is not None and value > hi:
                raise ValueError(f"must be <= {hi}, got {raw!r}")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        values[key] = value
    return section_type(**values)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, raw: Any, base_dir: Path) -> Any:
    """Check and convert one TOML value to the field's declared type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None: TOML has no null; "" means None
        inner = next(a for a in args if a is not type(None))
        if raw == "":
            return None
        return _convert(inner, raw, base_dir)
    if origin is Literal:
        if raw not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ValueError(f"must be one of {choices}, got {raw!r}")
        return raw
    if tp is bool:
        if not isinstance(raw, bool):
            raise TypeError(f"must be true or false, got {raw!r}")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise TypeError(f"must be an integer, got {raw!r}")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError(f"must be a number, got {raw!r}")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise TypeError(f"must be a string, got {raw!r}")
        return raw
    if tp is Path:
        if not isinstance(raw, str) or not raw:
            raise TypeError(f"must be a non-empty path string, got {raw!r}")
        p = Path(raw).expanduser()
        return p if p.is_absolute() else base_dir / p
    if tp is HostPort:
        if not isinstance(raw, str):
            raise TypeError(f'must be a string "HOST:PORT", got {raw!r}')
        return HostPort.parse(raw)
    if tp is PeerAddress:
        if not isinstance(raw, str):
            raise TypeError(f'must be a string "PUBKEYHEX@HOST:PORT", got {raw!r}')
        return PeerAddress.parse(raw)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if typing.get_origin(item) is tuple:  # a table of name -> value pairs
            if not isinstance(raw, dict):
                raise TypeError(f"must be a table, got {raw!r}")
            key_t, val_t = typing.get_args(item)
            return tuple(
                sorted(
                    (_convert(key_t, k, base_dir), _convert(val_t, v, base_dir))
                    for k, v in raw.items()
                )
            )
        if not isinstance(raw, list):
            raise TypeError(f"must be a list, got {raw!r}")
        return tuple(_convert(item, v, base_dir) for v in raw)
    raise TypeError(f"unsupported config type {_type_name(tp)}")  # a bug here, not the user's
