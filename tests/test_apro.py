import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

from stages.apro import global_propagation, grid_edges, local_propagation


def _minimax_brute(guide):
    a, b, w = grid_edges(guide)
    n = guide.shape[0] * guide.shape[1]
    mst = minimum_spanning_tree(coo_matrix((w + 1e-12, (a, b)), shape=(n, n))).tocoo()
    adj = {i: [] for i in range(n)}
    for i, j, x in zip(mst.row, mst.col, mst.data):
        adj[i].append((j, x - 1e-12))
        adj[j].append((i, x - 1e-12))
    C = np.zeros((n, n))
    for s in range(n):
        stack, seen = [(s, 0.0)], {s}
        while stack:
            u, m = stack.pop()
            C[s, u] = m
            for v, x in adj[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append((v, max(m, x)))
    return C


def test_global_propagation_equals_brute_force_minimax():
    rng = np.random.default_rng(1)
    g = rng.random((6, 5, 3))
    v = rng.random((2, 6, 5))
    C = _minimax_brute(g)
    W = np.exp(-C / 0.4**2)
    ref = (v.reshape(2, -1) @ W.T) / W.sum(1)
    out = global_propagation(g, v, zeta=0.4)
    np.testing.assert_allclose(out.reshape(2, -1), ref, atol=1e-10)


def test_local_propagation_brute_force():
    rng = np.random.default_rng(2)
    img = rng.random((5, 6, 3))
    v = rng.random((2, 5, 6))
    zeta, k = 0.5, 3
    y = v.copy()
    for _ in range(2):
        new = np.zeros_like(y)
        for i in range(5):
            for j in range(6):
                ws, vs = [], []
                for di in range(-1, 2):
                    for dj in range(-1, 2):
                        a, b = i + di, j + dj
                        if 0 <= a < 5 and 0 <= b < 6:
                            ws.append(np.exp(-((img[i, j] - img[a, b]) ** 2).sum() / zeta**2))
                            vs.append(y[:, a, b])
                ws = np.array(ws) / np.sum(ws)
                new[:, i, j] = (ws[:, None] * np.array(vs)).sum(0)
        y = new
    out = local_propagation(img, v, zeta=zeta, num_iter=2, kernel_size=k)
    np.testing.assert_allclose(out, y, atol=1e-5)
