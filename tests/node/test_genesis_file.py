"""genesis.json: round trip, derived peer ids, one-line errors naming the JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ledger.keys import KeyPair
from node.config import Config, ConfigError, ConsensusConfig, HostPort
from node.genesis_file import (
    ConsensusParams,
    GenesisDoc,
    OrganisationEntry,
    ValidatorEntry,
    check_consensus_matches,
    load_genesis,
    peer_id_of,
    write_genesis,
)


def make_genesis(n: int = 4) -> GenesisDoc:
    keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
    return GenesisDoc(
        chain_id="test-chain",
        genesis_time_ms=1_700_000_000_000,
        organisations=tuple(OrganisationEntry(f"h{i}", k.public_key) for i, k in enumerate(keys)),
        validators=tuple(
            ValidatorEntry(
                k.public_key, peer_id_of(k.public_key), HostPort("127.0.0.1", 26656 + i), f"n{i}"
            )
            for i, k in enumerate(keys)
        ),
        private_network_key=b"\x05" * 32,
    )


def test_roundtrip(tmp_path: Path) -> None:
    g = make_genesis()
    p = tmp_path / "genesis.json"
    write_genesis(p, g)
    loaded = load_genesis(p)
    assert loaded == g
    assert loaded.source == str(p)
    assert loaded.validator(g.validators[2].public_key) == g.validators[2]
    assert loaded.validator(b"\x00" * 32) is None
    text = p.read_text()
    assert g.validators[0].public_key.hex() in text


def test_peer_id_is_derived_from_the_key() -> None:
    k = KeyPair.from_seed(b"\x01" * 32)
    assert peer_id_of(k.public_key) == "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"


def mutate(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    target = doc
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ["validators", 1, "peer_id"],
            "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5",
            "validators[1].peer_id: does not match public_key",
        ),
        (
            ["validators", 0, "public_key"],
            "AB" * 32,
            "validators[0].public_key: must be 64 lowercase",
        ),
        (["validators", 2, "p2p_address"], "nowhere", "validators[2].p2p_address: expected"),
        (["validators", 0, "extra"], 1, "validators[0].extra: unknown field"),
        (["validators"], [], "validators: must be an array of at least 1"),
        (["organisations", 0, "name"], "", "organisations[0].name: must be a non-empty string"),
        (["chain_id"], KeyError, "chain_id: missing"),
        (["chain_id"], "x" * 65, "chain_id: must be a non-empty string of at most 64"),
        (["genesis_time_ms"], -1, "genesis_time_ms: must be an integer"),
        (["consensus", "window"], 0, "consensus.window: must be an integer in 1.."),
        (["break_glass", "allowed"], "yes", "break_glass.allowed: must be true or false"),
        (["private_network_key"], "00", "private_network_key: must be 64 lowercase hex"),
        (["surprise"], 1, "surprise: unknown field"),
    ],
)
def test_errors_name_the_json_path(
    tmp_path: Path, path: list[Any], value: Any, expected: str
) -> None:
    doc = mutate(make_genesis().to_json(), path, value)
    p = tmp_path / "genesis.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_genesis(p)
    assert str(info.value) == f"{p}: {expected}" or str(info.value).startswith(f"{p}: {expected}")
    assert "\n" not in str(info.value)


def test_duplicate_validator_is_refused(tmp_path: Path) -> None:
    doc = make_genesis().to_json()
    doc["validators"][1] = doc["validators"][0]
    p = tmp_path / "g.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="validators: duplicate public_key"):
        load_genesis(p)


def test_not_json_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "g.json"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_genesis(p)
    with pytest.raises(ConfigError, match="genesis file not found"):
        load_genesis(tmp_path / "absent.json")


def test_consensus_params_must_match_config() -> None:
    g = make_genesis()
    check_consensus_matches(Config(), g)  # defaults agree
    cfg = Config(consensus=ConsensusConfig(max_block_txs=10), source="n.toml")
    with pytest.raises(ConfigError, match=r"n.toml: consensus.max_block_txs: is 10 but genesis"):
        check_consensus_matches(cfg, g)
    assert ConsensusParams().max_block_txs == ConsensusConfig().max_block_txs
