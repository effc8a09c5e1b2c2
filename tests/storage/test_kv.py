"""The raw KV layer behaves the same on LevelDB and in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.kv import KV, MemoryKV, Op
from tests.storage.conftest import Backend


@pytest.fixture
def kv(backend: Backend) -> Iterator[KV]:
    kv = backend.open_kv()
    yield kv
    if not kv.closed:
        kv.close()


def test_get_put_delete(kv: KV) -> None:
    assert kv.get(b"a") is None
    kv.write([(b"a", b"1"), (b"b", b"")], sync=True)
    assert kv.get(b"a") == b"1"
    assert kv.get(b"b") == b""
    kv.write([(b"a", None), (b"a", b"2"), (b"b", None)], sync=False)
    assert kv.get(b"a") == b"2"
    assert kv.get(b"b") is None


def test_iterate_is_ordered_and_half_open(kv: KV) -> None:
    keys = [b"b\x00", b"a", b"b", b"b\xff", b"c", b"ab"]
    kv.write([(k, k.upper()) for k in keys], sync=True)
    assert [k for k, _ in kv.iterate(b"", None)] == sorted(keys)
    assert list(kv.iterate(b"ab", b"b\xff")) == [(b"ab", b"AB"), (b"b", b"B"), (b"b\x00", b"B\x00")]
    assert list(kv.iterate(b"b\xff", None)) == [(b"b\xff", b"B\xff"), (b"c", b"C")]
    assert list(kv.iterate(b"d", None)) == []


def test_iterator_sees_a_snapshot(kv: KV) -> None:
    kv.write([(b"k1", b"1"), (b"k2", b"2")], sync=True)
    it = kv.iterate(b"", None)
    kv.write([(b"k1", None), (b"k3", b"3")], sync=True)
    assert list(it) == [(b"k1", b"1"), (b"k2", b"2")]


def test_batch_that_fails_while_built_writes_nothing(kv: KV) -> None:
    kv.write([(b"keep", b"old")], sync=True)

    def ops() -> Iterator[Op]:
        yield b"keep", b"new"
        yield b"other", b"x"
        raise RuntimeError("caller failed half way")

    with pytest.raises(RuntimeError):
        kv.write(ops(), sync=True)
    assert list(kv.iterate(b"", None)) == [(b"keep", b"old")]


def test_closed_kv_refuses_use(kv: KV) -> None:
    kv.close()
    assert kv.closed
    with pytest.raises(RuntimeError):
        kv.get(b"a")


keys_st = st.binary(max_size=3)
op_st = st.one_of(
    st.tuples(st.just("write"), st.lists(st.tuples(keys_st, st.none() | st.binary(max_size=3)))),
    st.tuples(st.just("scan"), st.tuples(keys_st, st.none() | keys_st)),
)


@given(st.lists(op_st, max_size=30))
def test_memory_kv_matches_a_sorted_dict(ops: list[tuple[str, Any]]) -> None:
    """The lazily sorted twin agrees with the obvious model under any interleaving."""
    kv = MemoryKV()
    model: dict[bytes, bytes] = {}
    for kind, arg in ops:
        if kind == "write":
            kv.write(arg, sync=False)
            for key, value in arg:
                if value is None:
                    model.pop(key, None)
                else:
                    model[key] = value
        else:
            start, stop = arg
            want = [
                (k, model[k]) for k in sorted(model) if k >= start and (stop is None or k < stop)
            ]
            assert list(kv.iterate(start, stop)) == want
        for key in {k for k, _ in arg} if kind == "write" else ():
            assert kv.get(key) == model.get(key)
    assert list(kv.iterate(b"", None)) == sorted(model.items())
