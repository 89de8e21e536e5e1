"""Merkle trees as Certificate Transparency builds them (RFC 6962 §2.1, RFC 9162 §2.1).

A batch's root commits to every one of its events in order; an inclusion proof (the
audit path) shows one event is in a batch with log₂(n) hashes instead of the whole
batch. Leaves and nodes are hashed with different prefixes (0x00, 0x01), so a node can
never pass for a leaf. Following a published construction lets an auditor check our
proofs with any CT library, not only with ours.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes; bottom-up, an odd node carried up unpaired (the same tree as the RFC's split)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = list(leaves)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index``: PATH(m, D[n]) of RFC 6962 §2.1.1, nearest sibling first."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} of {len(leaves)}")
    path: list[bytes] = []
    lo, hi, m = 0, len(leaves), index
    stack: list[bytes] = []
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            stack.append(root(leaves[lo + k:hi]))
            hi = lo + k
        else:
            stack.append(root(leaves[lo:lo + k]))
            lo, m = lo + k, m - k
    path.extend(reversed(stack))
    return path


def proofs(leaves: Sequence[bytes], indices: Sequence[int]) -> list[list[bytes]]:
    """The audit paths of several leaves, from the tree's levels built once (O(n + k log n), not O(k n)).

    Bottom-up, an odd last node is carried up unpaired and contributes no sibling at that
    level: the same tree, and the same paths, as ``proof``'s recursive split.
    """
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        levels.append(paired)
    out = []
    for index in indices:
        if not 0 <= index < len(leaves):
            raise IndexError(f"leaf {index} of {len(leaves)}")
        path, i = [], index
        for level in levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i >>= 1
        out.append(path)
    return out


def verify_proof(leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` lead from leaf ``index`` of a tree of ``size`` to ``expected_root``?"""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
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
    return sn == 0 and r == expected_root
