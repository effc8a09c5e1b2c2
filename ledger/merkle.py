"""RFC 6962 Merkle trees over tx hashes: the block's ``tx_root`` and its proofs.

Exactly RFC 6962 §2.1 (kept unchanged in RFC 9162 §2.1) with SHA-256: the
hash of an empty tree is ``SHA-256("")``, a leaf is ``SHA-256(0x00 || d)`` and
an interior node ``SHA-256(0x01 || left || right)``; a tree of ``n`` leaves
splits at the largest power of two below ``n``. The 0x00/0x01 prefixes keep a
leaf from ever passing for a node (second-preimage safety), so no extra tag is
needed and standard CT tooling can check our proofs.

Building bottom-up and carrying an unpaired last node up a level unchanged
gives the same tree as the RFC's recursive definition; the tests check this
against a direct transcription of the RFC.

:func:`verify_inclusion` is what an auditor runs offline on data from outside;
it never raises, it only answers ``True`` or ``False``.

As in RFC 9162, ``tree_size`` must come from an authenticated source, like the
root itself: the leaf's *membership* follows from the root alone, but its
*index* is only as good as the tree size. A proof for leaf 2 of a 3-leaf tree
also verifies as "index 1 of a 2-leaf tree" against the same root, because both
describe the same path shape. Proofs served by a node should therefore be
checked with the tx count that a commit certificate covers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ledger.codec import Record
from ledger.hashing import HASH_SIZE

_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        nxt.append(level[-1])  # the unpaired last node moves up unchanged
    return nxt


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash (RFC 6962 MTH) of ``leaves`` (the tx hashes, in block order)."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(d) for d in leaves]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path (RFC 6962 PATH) of ``leaves[index]``, from the leaf level upward.

    Raises ``IndexError`` for an index outside the tree: this is called on our
    own blocks, so a bad index is a bug of the caller, not input from outside.
    """
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf index {index} outside a tree of {len(leaves)}")
    level = [leaf_hash(d) for d in leaves]
    proof: list[bytes] = []
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        level = _next_level(level)
        i //= 2
    return proof


def verify_inclusion(
    root: bytes, leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bool:
    """True iff ``proof`` shows ``leaf`` at ``index`` of the tree of ``tree_size`` with ``root``.

    The algorithm of RFC 9162 §2.1.3.2. Every input may come from outside, so
    wrong types, negative numbers and hashes of the wrong size give ``False``,
    never an exception.
    """
    if not (
        isinstance(root, bytes)
        and isinstance(leaf, bytes)
        and type(index) is int
        and type(tree_size) is int
        and isinstance(proof, Sequence)
        and len(root) == HASH_SIZE
        and 0 <= index < tree_size
        and all(isinstance(p, bytes) and len(p) == HASH_SIZE for p in proof)
    ):
        return False
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


class InclusionProof(Record, frozen=True):
    """A tx's place in its block, as served by the API and checked by ``medledger verify``.

    ``leaf`` is the tx hash; check it with :meth:`verify` against the block
    header's ``tx_root`` (itself certified by the block's commit certificate).
    """

    leaf: bytes
    index: int
    tree_size: int
    path: list[bytes]

    def verify(self, root: bytes) -> bool:
        return verify_inclusion(root, self.leaf, self.index, self.tree_size, self.path)


def prove(leaves: Sequence[bytes], index: int) -> InclusionProof:
    """The :class:`InclusionProof` of ``leaves[index]``."""
    return InclusionProof(leaves[index], index, len(leaves), inclusion_proof(leaves, index))
