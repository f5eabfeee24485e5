"""Masking graphs: complete (SecAgg) or a randomly labelled Harary graph (SecAgg+)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from aggregation._primitives import Csprng

__all__ = ["harary_neighbours", "transcript_hash"]


def transcript_hash(header: bytes, entries: Sequence[bytes]) -> bytes:
    """SHA-256 over every signed advertisement of the round, in id order.

    It seeds the SecAgg+ graph, so the server cannot pick the graph: each
    advertisement carries fresh keys signed by its client, and the hash of all
    of them is unpredictable before the last one arrives. (A server can still
    try different *subsets* by claiming dropouts; each try costs it a client
    for the round and the graph it gets is still a uniform draw.) The hash is
    also bound into the share encryption and the signed consistency message,
    so clients shown different key sets abort.
    """
    h = hashlib.sha256(b"secure-fml/secagg/v1/transcript")
    h.update(header)
    for e in entries:
        h.update(e)
    return h.digest()


def harary_neighbours(ids: Sequence[int], degree: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Neighbour sets of a k-regular Harary graph H_{k,m} over a seeded random relabelling.

    Clients are placed on a ring in an order drawn by Fisher-Yates from an
    AES-CTR stream keyed with ``seed``; each is joined to the k/2 nearest on
    either side. With k >= m - 1 the graph is complete.
    """
    ordered = sorted(ids)
    m = len(ordered)
    if degree >= m - 1:
        return {u: tuple(v for v in ordered if v != u) for u in ordered}
    rng = Csprng(hashlib.sha256(b"secure-fml/secagg/v1/graph" + seed).digest())
    perm = list(ordered)
    for i in range(m - 1, 0, -1):
        j = int(rng.below(i + 1, 1)[0])
        perm[i], perm[j] = perm[j], perm[i]
    half = degree // 2
    out: dict[int, tuple[int, ...]] = {}
    for pos, u in enumerate(perm):
        nb = {perm[(pos + off) % m] for off in range(1, half + 1)}
        nb |= {perm[(pos - off) % m] for off in range(1, half + 1)}
        out[u] = tuple(sorted(nb))
    return out
