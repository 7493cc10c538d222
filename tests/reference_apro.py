"""The first implementation of APro's GP, a union-find in plain Python (2.8 s per 375×500 channel): kept as the
reference that ``models.apro.global_propagation`` (compiled) must match within 1e-9, and as the baseline of
``bench/bench_apro.py``."""
from __future__ import annotations

import numpy as np

from models.apro import grid_edges


def global_propagation_python(guide: np.ndarray, values: np.ndarray, zeta: float) -> np.ndarray:
    """APro GP (Eq. 4–6): y_i = Σ_j v_j exp(−C(i,j)/ζ²) / Σ_j exp(−C(i,j)/ζ²).

    C(i,j) is the minimax distance: the largest edge weight on the path between i and j in the
    minimum spanning tree of the 4-connected grid with edge weights w = Σ_D (g_a − g_b)²
    (C(i,i) = 0). Computed in O(N log N) by Kruskal's algorithm with a lazily tagged union-find:
    when components A and B merge over an MST edge of weight w, every pair (i∈A, j∈B) has
    C(i,j) = w, so each member of A gains exp(−w/ζ²)·(Σ_B v, |B|) and vice versa; the gains are
    kept as tags on the roots and pushed down along paths by path compression.

    ``guide`` H×W×D, ``values`` K×H×W; returns K×H×W float64.

    >>> g = np.array([[[0.], [0.], [10.]]])
    >>> global_propagation_python(g, np.array([[[1., 0., 0.]]]), zeta=1.0).round(3).tolist()
    [[[0.5, 0.5, 0.0]]]
    """
    h, w = guide.shape[:2]
    n = h * w
    k = values.shape[0]
    vals = values.reshape(k, n).T.astype(np.float64)  # N×K
    sums = np.concatenate([vals, np.ones((n, 1))], 1)  # per root: (Σ v, count)
    tag = np.zeros((n, k + 1))  # lazy gains; a node's total = Σ tags on its path to the root
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    a, b, wt = grid_edges(guide)
    order = np.argsort(wt, kind="stable")
    factors = np.exp(-wt / zeta**2)

    def find(x: int) -> int:
        path = []
        while parent[x] != x:
            path.append(x)
            x = parent[x]
        root = x
        # compress: each node on the path then points at the root, its tag absorbing the tags
        # of the nodes above it (the root's own tag excluded), so path sums are unchanged.
        acc = np.zeros(k + 1)
        for node in reversed(path):
            acc = acc + tag[node]
            tag[node] = acc
            parent[node] = root
        return root

    merged = 0
    for e in order:
        ra, rb = find(int(a[e])), find(int(b[e]))
        if ra == rb:
            continue
        f = factors[e]
        tag[ra] += f * sums[rb]
        tag[rb] += f * sums[ra]
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        tag[rb] -= tag[ra]
        sums[ra] += sums[rb]
        size[ra] += size[rb]
        merged += 1
        if merged == n - 1:
            break
    total = np.empty((n, k + 1))
    for i in range(n):
        r = find(i)
        total[i] = tag[i] + tag[r] if i != r else tag[i]
    num = vals + total[:, :k]
    den = 1.0 + total[:, k:]
    return (num / den).T.reshape(k, h, w)
