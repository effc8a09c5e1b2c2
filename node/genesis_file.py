"""The network's genesis file (``genesis.json``): who is in the network, and its rules.

Every node reads the same file, so every field that decides validity is here:
chain id, genesis time, the founding organisations (hospitals), the validators
(public key, libp2p peer id, p2p address), the network-wide consensus
parameters, the break-glass policy and the private-network key that keeps
everyone else off the libp2p network. Keys and hashes are lowercase hex.

The JSON is a *document* for operators; the ledger's canonical genesis is
built from it by :meth:`GenesisDoc.to_ledger_genesis` and hashed there, so
JSON formatting never reaches a hash. A peer id is derived from the same
ed25519 key as the validator's public key; loading checks that they agree,
so a hand-edited file cannot map a validator to someone else's libp2p
identity.

Loading errors are one-line :class:`node.config.ConfigError` naming the file
and the JSON path of the bad field (``validators[2].peer_id``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.errors import LedgerError
from ledger.genesis import ConsensusParams as LedgerParams
from ledger.genesis import Genesis as LedgerGenesis
from ledger.genesis import GenesisOrg, Policy, validate_genesis
from node.config import Config, ConfigError, HostPort

__all__ = [
    "BreakGlassPolicy",
    "ConsensusParams",
    "GenesisDoc",
    "OrganisationEntry",
    "ValidatorEntry",
    "check_consensus_matches",
    "load_genesis",
    "new_private_network_key",
    "peer_id_of",
    "write_genesis",
]

MAX_CHAIN_ID = 64


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58 ``12D3Koo...``) of an ed25519 public key.

    libp2p is imported here, not at module load: it takes seconds to import,
    and ``medledger keys`` or ``status`` should answer at once.
    """
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58())


def new_private_network_key() -> bytes:
    """32 random bytes: the libp2p private-network (pnet) pre-shared key."""
    return secrets.token_bytes(32)


@dataclass(frozen=True, slots=True)
class OrganisationEntry:
    name: str
    public_key: bytes


@dataclass(frozen=True, slots=True)
class ValidatorEntry:
    public_key: bytes
    peer_id: str
    p2p_address: HostPort
    name: str = ""


@dataclass(frozen=True, slots=True)
class ConsensusParams:
    """Parameters every validator must share (local timing lives in the config)."""

    window: int = 4
    checkpoint_interval: int = 100
    max_block_txs: int = 2000
    max_block_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class BreakGlassPolicy:
    """Emergency access: allowed at all, and with which reason codes."""

    allowed: bool = True
    #: HL7 PurposeOfUse codes: break-the-glass, emergency treatment.
    reason_codes: tuple[str, ...] = ("BTG", "ETREAT")


@dataclass(frozen=True, slots=True)
class GenesisDoc:
    chain_id: str
    genesis_time_ms: int
    organisations: tuple[OrganisationEntry, ...]
    validators: tuple[ValidatorEntry, ...]
    consensus: ConsensusParams = ConsensusParams()
    break_glass: BreakGlassPolicy = BreakGlassPolicy()
    private_network_key: bytes | None = None
    #: Free text for operators; not part of the ledger's genesis.
    comment: str = ""
    source: str = field(default="<memory>", compare=False)

    def validator(self, public_key: bytes) -> ValidatorEntry | None:
        for v in self.validators:
            if v.public_key == public_key:
                return v
        return None

    @property
    def validator_keys(self) -> tuple[bytes, ...]:
        return tuple(v.public_key for v in self.validators)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"comment": self.comment} if self.comment else {}
        doc |= {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "organisations": [
                {"name": o.name, "public_key": o.public_key.hex()} for o in self.organisations
            ],
            "validators": [
                {
                    "name": v.name,
                    "public_key": v.public_key.hex(),
                    "peer_id": v.peer_id,
                    "p2p_address": str(v.p2p_address),
                }
                for v in self.validators
            ],
            "consensus": {
                "window": self.consensus.window,
                "checkpoint_interval": self.consensus.checkpoint_interval,
                "max_block_txs": self.consensus.max_block_txs,
                "max_block_bytes": self.consensus.max_block_bytes,
            },
            "break_glass": {
                "allowed": self.break_glass.allowed,
                "reason_codes": list(self.break_glass.reason_codes),
            },
        }
        if self.private_network_key is not None:
            doc["private_network_key"] = self.private_network_key.hex()
        return doc

    def to_ledger_genesis(self) -> LedgerGenesis:
        """The ledger's canonical genesis record (what is hashed and executed).

        A document the ledger refuses (e.g. a validator that is not one of the
        organisations) is a :class:`ConfigError` naming this file.
        """
        genesis = LedgerGenesis(
            chain_id=self.chain_id,
            genesis_time_ms=self.genesis_time_ms,
            organisations=sorted(
                (GenesisOrg(o.public_key, o.name) for o in self.organisations),
                key=lambda o: o.key,
            ),
            validators=sorted(v.public_key for v in self.validators),
            params=LedgerParams(
                window=self.consensus.window,
                checkpoint_interval=self.consensus.checkpoint_interval,
                max_block_txs=self.consensus.max_block_txs,
                max_block_bytes=self.consensus.max_block_bytes,
            ),
            policy=Policy(
                break_glass_enabled=self.break_glass.allowed,
                reason_codes=sorted(set(self.break_glass.reason_codes)),
            ),
        )
        try:
            validate_genesis(genesis)
        except LedgerError as exc:
            raise ConfigError(f"{self.source}: {exc.message}") from None
        return genesis


# --- loading -----------------------------------------------------------------------


class _Reader:
    """Typed access to a JSON tree; every error names the file and JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {reason}")

    def obj(
        self, value: Any, path: str, keys: Sequence[str], optional: Sequence[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "must be a JSON object")
        for k in value:
            if k not in keys and k not in optional:
                raise self.fail(f"{path}.{k}" if path else k, "unknown field")
        for k in keys:
            if k not in value:
                raise self.fail(f"{path}.{k}" if path else k, "missing")
        return value

    def string(self, value: Any, path: str, *, max_len: int = 256, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value) or len(value) > max_len:
            raise self.fail(
                path,
                f"must be a {'' if empty else 'non-empty '}string of at most {max_len} characters",
            )
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(path, f"must be an integer in {lo}..{hi}")
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, "must be true or false")
        return value

    def hex32(self, value: Any, path: str) -> bytes:
        if isinstance(value, str) and len(value) == 64 and value == value.lower():
            try:
                return bytes.fromhex(value)
            except ValueError:
                pass
        raise self.fail(path, "must be 64 lowercase hex digits")

    def array(self, value: Any, path: str, *, min_len: int = 0) -> list[Any]:
        if not isinstance(value, list) or len(value) < min_len:
            raise self.fail(path, f"must be an array of at least {min_len} entries")
        return value


def load_genesis(path: str | Path) -> GenesisDoc:
    """Read and validate a genesis file; raises :class:`ConfigError`."""
    p = Path(path)
    try:
        raw = json.loads(p.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{p}: genesis file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read genesis file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from None
    return parse_genesis(raw, source=str(p))


def parse_genesis(raw: Any, *, source: str) -> GenesisDoc:
    r = _Reader(source)
    doc = r.obj(
        raw,
        "",
        ("chain_id", "genesis_time_ms", "organisations", "validators"),
        ("consensus", "break_glass", "private_network_key", "comment"),
    )
    comment = r.string(doc.get("comment", ""), "comment", max_len=4096, empty=True)
    chain_id = r.string(doc["chain_id"], "chain_id", max_len=MAX_CHAIN_ID)
    genesis_time_ms = r.integer(doc["genesis_time_ms"], "genesis_time_ms", 0, 2**63 - 1)

    orgs: list[OrganisationEntry] = []
    for i, o in enumerate(r.array(doc["organisations"], "organisations", min_len=1)):
        path = f"organisations[{i}]"
        o = r.obj(o, path, ("name", "public_key"))
        orgs.append(
            OrganisationEntry(
                name=r.string(o["name"], f"{path}.name", max_len=128),
                public_key=r.hex32(o["public_key"], f"{path}.public_key"),
            )
        )
    if len({o.public_key for o in orgs}) != len(orgs):
        raise r.fail("organisations", "duplicate public_key")

    validators: list[ValidatorEntry] = []
    for i, v in enumerate(r.array(doc["validators"], "validators", min_len=1)):
        path = f"validators[{i}]"
        v = r.obj(v, path, ("public_key", "peer_id", "p2p_address"), ("name",))
        key = r.hex32(v["public_key"], f"{path}.public_key")
        try:
            expected = peer_id_of(key)
        except (ValueError, TypeError):
            raise r.fail(f"{path}.public_key", "not a valid ed25519 public key") from None
        peer_id = r.string(v["peer_id"], f"{path}.peer_id", max_len=128)
        if peer_id != expected:
            raise r.fail(
                f"{path}.peer_id", "does not match public_key (the peer id derives from it)"
            )
        try:
            addr = HostPort.parse(r.string(v["p2p_address"], f"{path}.p2p_address"))
        except ValueError as exc:
            raise r.fail(f"{path}.p2p_address", str(exc)) from None
        name = r.string(v.get("name", ""), f"{path}.name", max_len=128, empty=True)
        validators.append(ValidatorEntry(key, peer_id, addr, name))
    if len({v.public_key for v in validators}) != len(validators):
        raise r.fail("validators", "duplicate public_key")

    consensus = ConsensusParams()
    if "consensus" in doc:
        c = r.obj(
            doc["consensus"],
            "consensus",
            (),
            ("window", "checkpoint_interval", "max_block_txs", "max_block_bytes"),
        )
        consensus = ConsensusParams(
            window=r.integer(c.get("window", consensus.window), "consensus.window", 1, 1 << 20),
            checkpoint_interval=r.integer(
                c.get("checkpoint_interval", consensus.checkpoint_interval),
                "consensus.checkpoint_interval",
                1,
                1 << 20,
            ),
            max_block_txs=r.integer(
                c.get("max_block_txs", consensus.max_block_txs),
                "consensus.max_block_txs",
                1,
                1 << 20,
            ),
            max_block_bytes=r.integer(
                c.get("max_block_bytes", consensus.max_block_bytes),
                "consensus.max_block_bytes",
                1024,
                256 << 20,
            ),
        )

    policy = BreakGlassPolicy()
    if "break_glass" in doc:
        b = r.obj(doc["break_glass"], "break_glass", (), ("allowed", "reason_codes"))
        codes = policy.reason_codes
        if "reason_codes" in b:
            codes = tuple(
                r.string(c, f"break_glass.reason_codes[{i}]", max_len=64)
                for i, c in enumerate(r.array(b["reason_codes"], "break_glass.reason_codes"))
            )
        policy = BreakGlassPolicy(
            allowed=r.boolean(b.get("allowed", policy.allowed), "break_glass.allowed"),
            reason_codes=codes,
        )

    pnet: bytes | None = None
    if doc.get("private_network_key") is not None:
        pnet = r.hex32(doc["private_network_key"], "private_network_key")

    return GenesisDoc(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        organisations=tuple(orgs),
        validators=tuple(validators),
        consensus=consensus,
        break_glass=policy,
        private_network_key=pnet,
        comment=comment,
        source=source,
    )


def write_genesis(path: str | Path, genesis: GenesisDoc) -> None:
    """Write ``genesis`` as pretty JSON, atomically (temp file + rename)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_text(json.dumps(genesis.to_json(), indent=2) + "\n")
        os.replace(tmp, p)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot write genesis file: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def check_consensus_matches(config: Config, genesis: GenesisDoc) -> None:
    """Refuse a config whose network-wide consensus values differ from genesis.

    A node that cut blocks with a different ``max_block_bytes`` than its peers
    would propose blocks they reject; better to fail at start with the key.
    """
    mine: Mapping[str, int] = {
        "window": config.consensus.window,
        "checkpoint_interval": config.consensus.checkpoint_interval,
        "max_block_txs": config.consensus.max_block_txs,
        "max_block_bytes": config.consensus.max_block_bytes,
    }
    for key, value in mine.items():
        theirs = getattr(genesis.consensus, key)
        if value != theirs:
            raise ConfigError(
                f"{config.source}: consensus.{key}: is {value} but genesis "
                f"{genesis.source} says {theirs}"
            )
