from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import CorruptionError
from storage import schema
from storage.checksum import HEADER_SIZE, describe_key, seal, unseal
from storage.schema import Namespace

heights = st.integers(min_value=0, max_value=schema.MAX_HEIGHT)


def test_prefixes_are_single_distinct_bytes() -> None:
    prefixes = [ns.value for ns in Namespace]
    assert all(len(p) == 1 for p in prefixes)
    assert len(set(prefixes)) == len(prefixes)
    for ns in Namespace:
        assert schema.namespace_of(ns.value + b"x") is ns
    assert schema.namespace_of(b"") is None
    assert schema.namespace_of(b"\x00abc") is None


@given(heights, heights)
def test_height_keys_sort_in_height_order(a: int, b: int) -> None:
    ka, kb = schema.block_key(a), schema.block_key(b)
    assert (ka < kb) == (a < b)
    assert schema.height_of_key(ka) == a


def test_height_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        schema.encode_height(-1)
    with pytest.raises(ValueError):
        schema.encode_height(schema.MAX_HEIGHT + 1)
    with pytest.raises(ValueError):
        schema.encode_location(1, -1)


@given(heights, st.integers(min_value=0, max_value=schema.MAX_INDEX))
def test_location_round_trip(height: int, index: int) -> None:
    raw = schema.encode_location(height, index)
    assert len(raw) == schema.LOCATION_SIZE
    assert schema.decode_location(raw) == (height, index)


@given(st.binary(max_size=8), st.binary(max_size=8))
def test_prefix_end_bounds_exactly_the_prefix(prefix: bytes, key: bytes) -> None:
    end = schema.prefix_end(prefix)
    inside = key.startswith(prefix)
    in_range = key >= prefix and (end is None or key < end)
    assert inside == in_range


def test_namespace_range_covers_only_its_namespace() -> None:
    start, stop = schema.namespace_range(Namespace.BLOB)
    assert stop is not None
    assert start <= schema.blob_key(b"\xff" * 32) < stop
    assert not start <= schema.state_key(b"x") < stop


@given(st.binary(min_size=1, max_size=40), st.binary(max_size=200))
def test_seal_round_trip(key: bytes, payload: bytes) -> None:
    stored = seal(key, payload)
    assert len(stored) == len(payload) + HEADER_SIZE
    assert unseal(key, stored) == payload


@given(st.binary(max_size=100), st.data())
def test_any_byte_flip_is_corruption(payload: bytes, data: st.DataObject) -> None:
    key = schema.state_key(b"k")
    stored = bytearray(seal(key, payload))
    pos = data.draw(st.integers(min_value=0, max_value=len(stored) - 1))
    stored[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(CorruptionError):
        unseal(key, bytes(stored))


def test_value_under_another_key_is_corruption() -> None:
    stored = seal(schema.block_key(1), b"block one")
    with pytest.raises(CorruptionError, match="block/0000000000000002"):
        unseal(schema.block_key(2), stored)


def test_truncated_value_is_corruption() -> None:
    with pytest.raises(CorruptionError, match="truncated"):
        unseal(schema.block_key(1), b"\x01\x00")


def test_describe_key_names_namespace_and_bounds_length() -> None:
    assert describe_key(schema.tx_location_key(b"\xab" * 32)) == "tx_location/" + "ab" * 32
    long = describe_key(schema.state_key(b"\x01" * 500))
    assert long.startswith("state/0101") and long.endswith("...(500 bytes)")
    assert describe_key(b"\x00zz").startswith("unknown/")
