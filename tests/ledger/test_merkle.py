"""RFC 6962 Merkle tree: test vectors, a naive reference, and tamper properties."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import codec
from ledger.merkle import (
    EMPTY_ROOT,
    InclusionProof,
    inclusion_proof,
    merkle_root,
    prove,
    verify_inclusion,
)

# --- a direct transcription of RFC 6962 §2.1, used as the reference ---------------


def _k(n: int) -> int:
    """Largest power of two strictly smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + naive_mth(d[:k]) + naive_mth(d[k:])).digest()


def naive_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*naive_path(m, d[:k]), naive_mth(d[k:])]
    return [*naive_path(m - k, d[k:]), naive_mth(d[:k])]


def shape(m: int, n: int) -> list[str]:
    """Left/right turns from the root to leaf m of an n-leaf tree."""
    if n == 1:
        return []
    k = _k(n)
    return ["L", *shape(m, k)] if m < k else ["R", *shape(m - k, n - k)]


def leaves_of(n: int) -> list[bytes]:
    """n distinct 32-byte leaves, like tx hashes."""
    return [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]


# --- RFC 6962 test vectors (certificate-transparency reference test data) ----------

RFC_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
RFC_PATHS = [
    (0, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (5, 8, [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
]  # fmt: skip


def test_empty_tree_is_hash_of_empty_string() -> None:
    assert merkle_root([]) == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("n", range(1, 9))
def test_rfc_roots(n: int) -> None:
    assert merkle_root(RFC_LEAVES[:n]).hex() == RFC_ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "path"), RFC_PATHS)
def test_rfc_paths(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(RFC_LEAVES[:size], index)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(RFC_ROOTS[size - 1])
    assert verify_inclusion(root, RFC_LEAVES[index], index, size, proof)


# --- agreement with the reference, every index of every size 1..70 ----------------


def test_every_index_of_sizes_1_to_70() -> None:
    for n in range(1, 71):
        leaves = leaves_of(n)
        root = merkle_root(leaves)
        assert root == naive_mth(leaves)
        for i in range(n):
            proof = inclusion_proof(leaves, i)
            assert proof == naive_path(i, leaves), (n, i)
            assert verify_inclusion(root, leaves[i], i, n, proof), (n, i)
            # the leaf must be the one at i, not any other leaf of the tree
            j = (i + 1) % n
            if j != i:
                assert not verify_inclusion(root, leaves[j], i, n, proof), (n, i)


def test_inclusion_proof_rejects_bad_index() -> None:
    with pytest.raises(IndexError):
        inclusion_proof(leaves_of(3), 3)
    with pytest.raises(IndexError):
        inclusion_proof(leaves_of(3), -1)
    with pytest.raises(IndexError):
        inclusion_proof([], 0)


# --- tampering (hypothesis) -------------------------------------------------------


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[list[bytes], int]:
    n = draw(st.integers(1, 70))
    return leaves_of(n), draw(st.integers(0, n - 1))


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


@given(tree_and_index(), st.integers(0, 31), st.integers(0, 7))
def test_tampered_leaf_or_root_fails(ti: tuple[list[bytes], int], pos: int, bit: int) -> None:
    leaves, i = ti
    n = len(leaves)
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, i)
    assert verify_inclusion(root, leaves[i], i, n, proof)
    assert not verify_inclusion(root, _flip(leaves[i], pos, bit), i, n, proof)
    assert not verify_inclusion(_flip(root, pos, bit), leaves[i], i, n, proof)


@given(tree_and_index(), st.data(), st.integers(0, 31), st.integers(0, 7))
def test_tampered_proof_element_fails(
    ti: tuple[list[bytes], int], data: st.DataObject, pos: int, bit: int
) -> None:
    leaves, i = ti
    n = len(leaves)
    root = merkle_root(leaves)
    proof = inclusion_proof(leaves, i)
    if not proof:  # a one-leaf tree has an empty path; extending it must fail
        assert not verify_inclusion(root, leaves[i], i, n, [root])
        return
    k = data.draw(st.integers(0, len(proof) - 1))
    bad = list(proof)
    bad[k] = _flip(bad[k], pos, bit)
    assert not verify_inclusion(root, leaves[i], i, n, bad)
    assert not verify_inclusion(root, leaves[i], i, n, proof[:k] + proof[k + 1 :])  # dropped
    assert not verify_inclusion(root, leaves[i], i, n, [*proof, proof[k]])  # extended


@given(tree_and_index(), st.integers(-5, 200))
def test_tampered_index_fails(ti: tuple[list[bytes], int], other: int) -> None:
    """In a tree of a given size, a proof is valid for exactly one index."""
    leaves, i = ti
    n = len(leaves)
    if other == i:
        other = i + 1
    proof = inclusion_proof(leaves, i)
    assert not verify_inclusion(merkle_root(leaves), leaves[i], other, n, proof)


@given(tree_and_index(), st.integers(-5, 200), st.integers(-5, 200))
def test_tampered_size_fails_unless_same_path_shape(
    ti: tuple[list[bytes], int], other_size: int, other_index: int
) -> None:
    """A changed size (and index) verifies only when it describes the same path.

    This is inherent to RFC 6962/9162 (see the module docstring): the tree size
    must be authenticated alongside the root. The expected answer is computed
    from the RFC's recursive definition, not from the verifier.
    """
    leaves, i = ti
    n = len(leaves)
    if other_size == n:
        other_size = n + 1
    proof = inclusion_proof(leaves, i)
    expected = 0 <= other_index < other_size and shape(other_index, other_size) == shape(i, n)
    got = verify_inclusion(merkle_root(leaves), leaves[i], other_index, other_size, proof)
    assert got == expected


def test_size_ambiguity_example() -> None:
    """Documented caveat: leaf 2 of 3 also verifies as leaf 1 of 2 against the same root."""
    leaves = leaves_of(3)
    proof = inclusion_proof(leaves, 2)
    root = merkle_root(leaves)
    assert verify_inclusion(root, leaves[2], 1, 2, proof)
    assert not verify_inclusion(root, leaves[2], 2, 4, proof)


@pytest.mark.parametrize(
    "args",
    [
        ("root", b"x", 0, 1, []),
        (b"\x00" * 32, "leaf", 0, 1, []),
        (b"\x00" * 32, b"x", "0", 1, []),
        (b"\x00" * 32, b"x", 0, 1.0, []),
        (b"\x00" * 32, b"x", True, 2, [b"\x00" * 32]),
        (b"\x00" * 32, b"x", 0, 2, None),
        (b"\x00" * 32, b"x", 0, 2, [b"\x00" * 31]),
        (b"\x00" * 32, b"x", 0, 2, ["00" * 32]),
        (b"\x00" * 31, b"x", 0, 1, []),
        (b"\x00" * 32, b"x", -1, 1, []),
        (b"\x00" * 32, b"x", 0, 0, []),
        (b"\x00" * 32, b"x", 0, -1, []),
        (b"\x00" * 32, b"x", 2**70, 2**71, [b"\x00" * 32]),
    ],
)
def test_garbage_gives_false_not_exception(args: tuple[Any, ...]) -> None:
    assert verify_inclusion(*args) is False


@given(
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.integers(),
    st.integers(),
    st.lists(st.binary(max_size=40), max_size=8),
)
def test_random_input_never_raises(
    root: bytes, leaf: bytes, index: int, size: int, proof: list[bytes]
) -> None:
    assert verify_inclusion(root, leaf, index, size, proof) in (True, False)


def test_inclusion_proof_record_round_trips_and_verifies() -> None:
    leaves = leaves_of(11)
    p = prove(leaves, 7)
    assert codec.decode(codec.encode(p), InclusionProof) == p
    assert p.verify(merkle_root(leaves))
    assert not p.verify(merkle_root(leaves[:10]))
