"""APro's global affinity propagation (GP): the compiled tree filter against the first (plain Python union-find)
implementation and an O(N²) brute force, and its scaling from 64² to 1024²; one core (``NUMBA_NUM_THREADS`` and
torch threads 1). Also LP and one APro loss step at the default profile's size.

    python bench/bench_apro.py [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from models.apro import AProConfig, AProLoss, global_propagation, grid_edges, local_propagation  # noqa: E402
from models.segmentation import segmentation_net  # noqa: E402
from tests.reference_apro import global_propagation_python  # noqa: E402


def best(fn, repeat: int = 3) -> float:
    fn()
    t = []
    for _ in range(repeat):
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return min(t)


def brute_force(guide: np.ndarray, values: np.ndarray, zeta: float) -> np.ndarray:
    """O(N²) minimax distances by a max-plus closure over the MST (scipy), then the dense weighted average."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
    a, b, w = grid_edges(guide)
    n = guide.shape[0] * guide.shape[1]
    mst = minimum_spanning_tree(coo_matrix((w + 1e-300, (a, b)), shape=(n, n))).tocsr()
    sym = (mst + mst.T).tocsr()
    C = np.zeros((n, n))
    for s in range(n):
        order, pred = breadth_first_order(sym, s, directed=False)
        for v in order[1:]:
            C[s, v] = max(C[s, pred[v]], sym[pred[v], v])
    W = np.exp(-C / zeta**2)
    k = values.shape[0]
    return ((values.reshape(k, -1) @ W.T) / W.sum(1)).reshape(values.shape)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("| GP, one core | size | channels | compiled (s) | Python union-find (s) | brute force O(N²) (s) | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    g, v = rng.random((24, 24, 3)), rng.random((1, 24, 24))
    out = global_propagation(g, v, 0.15)
    print(f"| vs both | 24² | 1 | {best(lambda: global_propagation(g, v, 0.15)):.4f} | {best(lambda: global_propagation_python(g, v, 0.15), 1):.3f} "
          f"| {best(lambda: brute_force(g, v, 0.15), 1):.3f} | {max(abs(out - global_propagation_python(g, v, 0.15)).max(), abs(out - brute_force(g, v, 0.15)).max()):.1e} |")
    g, v = rng.random((375, 500, 3)), rng.random((1, 375, 500))
    py = best(lambda: global_propagation_python(g, v, 0.15), 1) if not args.quick else float("nan")
    print(f"| vs Python | 375×500 | 1 | {best(lambda: global_propagation(g, v, 0.15)):.3f} | {py:.2f} | – | "
          f"{'–' if args.quick else f'{abs(global_propagation(g, v, 0.15) - global_propagation_python(g, v, 0.15)).max():.1e}'} |")
    print()
    print("| GP scaling, one core | 1 channel (s) | 21 channels (s) | 21 channels + feature pass (s) |")
    print("|---|---|---|---|")
    for s in (64, 128, 256, 512) if args.quick else (64, 128, 256, 512, 1024):
        g = rng.random((s, s, 3))
        f = rng.random((s, s, 16))
        v1, v21 = rng.random((1, s, s)), rng.random((21, s, s))
        print(f"| {s}² | {best(lambda: global_propagation(g, v1, 0.15)):.4f} | {best(lambda: global_propagation(g, v21, 0.15)):.4f} "
              f"| {best(lambda: global_propagation(g, v21, 0.15, f, 0.5)):.4f} |")
    print()
    img = torch.rand(1, 3, 512, 512)
    print(f"LP (21 classes, 20 iterations, 5×5) at 512², one core: {best(lambda: local_propagation(img, torch.rand(1, 21, 512, 512)), 1):.2f} s")
    net = segmentation_net(backbone="resnet18", channels=[32, 64, 128, 192], weights=None)
    batch = (torch.randn(8, 3, 96, 96), torch.full((8, 96, 96), 255, dtype=torch.long))
    for mode in ("none", "gp-lp-p"):
        loss = AProLoss(AProConfig(propagation=mode))
        print(f"APro loss forward, batch 8 × 96², propagation {mode}: {best(lambda: loss(net, batch)):.3f} s")


if __name__ == "__main__":
    main()
