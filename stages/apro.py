"""Affinity propagation of APro (Tian et al., "Label-efficient Segmentation via Affinity Propagation", NeurIPS 2023).

``global_propagation`` is the global affinity propagation (GP, Eq. 4–6) over the minimum spanning
tree of the 4-connected pixel graph; ``local_propagation`` is the local affinity propagation
(LP, Eq. 7–8) over k×k windows.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def grid_edges(guide: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected grid edges (a, b, w) with w = Σ_D (g_a − g_b)²; indices are row-major pixel ids."""
    h, w = guide.shape[:2]
    g = guide.reshape(h, w, -1).astype(np.float64)
    idx = np.arange(h * w).reshape(h, w)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    wt = np.concatenate([((g[:, :-1] - g[:, 1:]) ** 2).sum(-1).ravel(), ((g[:-1] - g[1:]) ** 2).sum(-1).ravel()])
    return a, b, wt


def global_propagation(guide: np.ndarray, values: np.ndarray, zeta: float) -> np.ndarray:
    """APro GP (Eq. 4–6): y_i = Σ_j v_j exp(−C(i,j)/ζ²) / Σ_j exp(−C(i,j)/ζ²).

    C(i,j) is the minimax distance: the largest edge weight on the path between i and j in the
    minimum spanning tree of the 4-connected grid with edge weights w = Σ_D (g_a − g_b)²
    (C(i,i) = 0). Computed in O(N log N) by Kruskal's algorithm with a lazily tagged union-find:
    when components A and B merge over an MST edge of weight w, every pair (i∈A, j∈B) has
    C(i,j) = w, so each member of A gains exp(−w/ζ²)·(Σ_B v, |B|) and vice versa; the gains are
    kept as tags on the roots and pushed down along paths by path compression.

    ``guide`` H×W×D, ``values`` K×H×W; returns K×H×W float64.

    >>> g = np.array([[[0.], [0.], [10.]]])
    >>> global_propagation(g, np.array([[[1., 0., 0.]]]), zeta=1.0).round(3).tolist()
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


def local_propagation(image: np.ndarray | torch.Tensor, values: np.ndarray | torch.Tensor, zeta: float = 0.15,
                      num_iter: int = 20, kernel_size: int = 5) -> np.ndarray:
    """APro LP (Eq. 7–8): y ← Σ_{j∈W(i)} ψ(i,j) y_j, ``num_iter`` times.

    W(i) is the k×k window around i (centre included, pixels outside the image excluded),
    ψ(i,j) = exp(−‖I_i − I_j‖²/ζ²) / Σ_{j'∈W(i)} exp(−‖I_i − I_j'‖²/ζ²).
    ``image`` H×W×D float, ``values`` K×H×W; returns K×H×W float32 numpy.
    """
    img = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    img = img.reshape(img.shape[0], img.shape[1], -1).permute(2, 0, 1)[None]  # 1×D×H×W
    y = torch.as_tensor(np.asarray(values), dtype=torch.float32)[None]  # 1×K×H×W
    h, w = img.shape[-2:]
    r = kernel_size // 2
    valid = F.pad(torch.ones(1, 1, h, w), [r] * 4)
    ip = F.pad(img, [r] * 4)
    offs = [(dy, dx) for dy in range(kernel_size) for dx in range(kernel_size)]
    wts = []
    for dy, dx in offs:
        d2 = ((ip[..., dy:dy + h, dx:dx + w] - img) ** 2).sum(1, keepdim=True)
        wts.append(torch.exp(-d2 / zeta**2) * valid[..., dy:dy + h, dx:dx + w])
    wts = torch.cat(wts, 1)
    wts = wts / wts.sum(1, keepdim=True)
    for _ in range(num_iter):
        yp = F.pad(y, [r] * 4)
        y = sum(wts[:, j:j + 1] * yp[..., dy:dy + h, dx:dx + w] for j, (dy, dx) in enumerate(offs))
    return y[0].numpy()
