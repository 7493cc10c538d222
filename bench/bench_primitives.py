"""Time the refinement primitives at VOC-like sizes; prints a table.

    python bench/bench_primitives.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.apro import global_propagation, local_propagation  # noqa: E402
from models.sasformer import affinity_loss  # noqa: E402
from models.swtformer import class_prototypes, locate_seeds, reactivate, structure_affinity  # noqa: E402
from stages.crf import dense_crf  # noqa: E402
from stages.random_walk import propagate  # noqa: E402
from stages.refine import par  # noqa: E402


def timeit(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _swtformer_refinement(b: int, grid: int, hie: int) -> torch.Tensor:
    """Eq. 4's affinity, seed locating, prototypes and R-CAM for a batch (random inputs of Swin-T's sizes)."""
    tokens, cams = torch.randn(b, 768, grid, grid), torch.rand(b, 21, grid, grid)
    feats, valid = torch.randn(b, 512, hie, hie), torch.ones(b, 21)
    seeds = locate_seeds(cams, structure_affinity(tokens), valid)
    return reactivate(class_prototypes(seeds, feats), feats)


def _sasformer_affinity_step(b: int) -> None:
    """L_aff (Eq. 3–7) and its gradient for one batch at the paper's sizes: MiT-B4 on 512 crops with the last block
    at stride 16 — queries 128², 64², 32², 32² on keys 16², 16², 16², 32² — 21 classes, random attention."""
    q, k = [(128, 128), (64, 64), (32, 32), (32, 32)], [(16, 16), (16, 16), (16, 16), (32, 32)]
    att = [torch.rand(b, a[0] * a[1], c[0] * c[1]).softmax(-1).requires_grad_() for a, c in zip(q, k)]
    logits = torch.randn(b, 21, 128, 128, requires_grad=True)
    affinity_loss(att, logits, q, k, torch.ones(b, 512, 512, dtype=torch.bool)).backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller images")
    args = ap.parse_args()
    h, w = (128, 160) if args.quick else (375, 500)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img_t = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    probs = rng.random((3, h, w)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    n = (h // 16) * (w // 16)
    rows = [
        ("par (3 classes, 10 iter)", f"{h}x{w}", timeit(lambda: par(img_t, torch.from_numpy(probs)[None]))),
        ("dense_crf (3 classes, 10 iter)", f"{h}x{w}", timeit(lambda: dense_crf(img, probs))),
        ("random_walk.propagate (beta 2, log_t 3)", f"N={n}", timeit(lambda: propagate(torch.rand(3, n), torch.rand(n, n), 2.0, 3))),
        ("apro.local_propagation (3 classes, 20 iter)", f"{h}x{w}",
         timeit(lambda: local_propagation(img_t / 255.0, torch.from_numpy(probs)[None]), 1)),
        ("apro.global_propagation (3 classes)", f"{h}x{w}", timeit(lambda: global_propagation(img / 255.0, probs, 0.3), 1)),
        # SWTformer V2 per training batch of 16 at 224 crops on Swin-T: T_out 7×7×768, F_hie 14×14×512, 21 maps
        ("swtformer seeds + prototypes + R-CAM (B=16)", "7x7 / 14x14", timeit(lambda: _swtformer_refinement(16, 7, 14))),
        # SASFormer's affinity loss, forward and backward, for one GPU's share (4 images) of the paper's batch of 16
        ("sasformer L_aff + backward (B=4)", "512 crops", timeit(lambda: _sasformer_affinity_step(4), 1)),
    ]
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'primitive':42s} {'size':>12s} {'seconds':>9s}")
    for name, size, sec in rows:
        print(f"{name:42s} {size:>12s} {sec:9.3f}")


if __name__ == "__main__":
    main()
