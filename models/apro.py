"""APro (Li et al., "Label-efficient Segmentation via Affinity Propagation", NeurIPS 2023) on points and scribbles.

A segmentation network (the shared one, ``models/segmentation.py``) trained single-stage with
L = L_g + L_u: L_g the partial cross-entropy on the labelled pixels, L_u the L1 distance between the network's
prediction P and soft pseudo labels Y made from P itself by affinity propagation:

- **GP**, global affinity propagation (Eq. 3–4, ``global_propagation``): every pixel averages every other pixel's
  prediction, weighted by exp(−C(i,j)/ζ_g²) with C(i,j) the largest edge weight on the path between i and j in the
  minimum spanning tree of the 4-connected image graph (edge weight ‖I_a − I_b‖²). As the paper does, GP runs on
  the image and then on the network's high-level features (the same tree, its edges re-weighted by the features);
- **LP**, local affinity propagation (Eq. 5–6, ``local_propagation``): ``num_iter`` rounds of averaging over k×k
  windows weighted by the normalised exp(−‖I_i − I_j‖²/ζ_s²).

``apro.propagation`` picks the ablations: Table 4 (``none`` = the unary term alone, ``gp``, ``lp``, ``gp-lp-p``)
and Table 7 (``gp-lp-c`` / ``lp-gp-c``: one target by cascading both; ``gp-lp-p``: both targets in parallel,
the paper's choice). GP's tree walk is compiled (numba): the Kruskal merge with lazily tagged union-find is
sequential by nature.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Literal

import numba
import numpy as np
import torch
import torch.nn.functional as F

from models.segmentation import partial_cross_entropy
from pydantic import AfterValidator, Field

from pipeline.config import Section, config_section
from pipeline.transforms import IMAGENET_MEAN, IMAGENET_STD
from pipeline.voc import IGNORE_INDEX

def _odd(k: int) -> int:
    if k < 1 or k % 2 == 0:
        raise ValueError("must be an odd window size (1, 3, 5, ...)")
    return k


Propagation = Literal["gp-lp-p", "gp-lp-c", "lp-gp-c", "gp", "lp", "none"]


#: the released code's propagation (CircleRadon/APro: configs/apro_box2mask/box2mask_r50_lsj_8x2_50e_voc.py:27-30,
#: mmdet/models/dense_heads/box2mask_head.py:271-313, mmdet/models/utils/misc.py:75); docs/apro.md has the table
PAPER_APRO = {"guide": "normalised", "gp_size": 96, "zeta_g": 0.02, "gp_edges": "absolute", "zeta_f": 0.03,
              "high_level": "prediction", "zeta_s": 0.15, "kernel_size": 5, "num_iter": 20, "stride": 4,
              "unary_weight": 1.0, "unary_from": 0.0, "refine_labels": False}


@config_section("apro", profiles={"smoke": {"num_iter": 5}, "paper": PAPER_APRO})
class AProConfig(Section):
    """APro's knobs (the network and its schedule are the ``segmentation`` section's)."""

    propagation: Propagation = "gp-lp-p"  # Table 4 / Table 7; none: partial cross-entropy alone
    # the colour space GP and LP see: rgb01 (RGB in [0, 1], the default's measured choice) or normalised (the
    # network's input, ImageNet mean/std on 0-255 pixels, as the released code: box2mask_head.py:235, maskformer.py:107)
    guide: Literal["rgb01", "normalised"] = "rgb01"
    # GP on a gp_size×gp_size grid (the released code's 96, misc.py:75), its target brought back bilinearly and compared
    # with the prediction resampled the same way (box2mask_head.py:309-312); None: GP at LP's grid (1/stride)
    gp_size: int | None = Field(None, ge=2)
    # GP on the image. relative: the edge weights in units of the image's median neighbour distance (README, APro:
    # a fixed ζ_g on RGB in [0, 1] smoothed style a into one class at 0.02 and did nothing on style b at 0.01);
    # absolute: RGB in [0, 1] as the paper's formula has it. 0.2: the largest relative ζ_g whose GP in training
    # did not lower val mIoU on style a (0.3 and 0.4 did: README, APro)
    zeta_g: float = Field(0.2, gt=0)
    gp_edges: Literal["relative", "absolute"] = "relative"
    # GP's high-level pass after the image's, over the same tree re-weighted by `high_level`: `prediction` (APro's
    # released code: the image pass's own output, ζ 0.07 on probabilities) or `features` (the network's last
    # features, L2-normalised); zeta_f None: the image pass only
    zeta_f: float | None = Field(None, gt=0)
    high_level: Literal["prediction", "features"] = "prediction"
    zeta_s: float = Field(0.15, gt=0)  # LP
    kernel_size: Annotated[int, AfterValidator(_odd)] = 5  # LP window
    num_iter: int = Field(20, ge=0)  # LP rounds
    stride: int = Field(1, ge=1)  # propagate at 1/stride of the crop (the paper's 512 crops: at 1/4)
    # weight of L_u: 0.4 where the paper writes 1 — TEL's code's weight for its L1 tree energy loss, the term L_u
    # follows (README, APro: at 1 the L1 term eroded objects and lost to partial cross-entropy in each setting measured)
    unary_weight: float = Field(0.4, ge=0)
    # L_u joins after this fraction of the training steps (partial cross-entropy alone before); 0: from the first step
    unary_from: float = Field(0.0, ge=0.0, le=1.0)
    refine_labels: bool = True  # stored pseudo labels: the predictions refined by GP (image) then LP


# ------------------------------------------------------------------------------------------- GP


def grid_edges(guide: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected grid edges (a, b, w) of an H×W×D guide with w = Σ_D (g_a − g_b)²; row-major pixel ids.

    >>> a, b, w = grid_edges(np.array([[[0.], [1.]], [[3.], [3.]]]))
    >>> a.tolist(), b.tolist(), w.tolist()
    ([0, 2, 0, 1], [1, 3, 2, 3], [1.0, 0.0, 9.0, 4.0])
    """
    h, w = guide.shape[:2]
    g = guide.reshape(h, w, -1).astype(np.float64)
    idx = np.arange(h * w).reshape(h, w)
    a = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    b = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    wt = np.concatenate([((g[:, :-1] - g[:, 1:]) ** 2).sum(-1).ravel(), ((g[:-1] - g[1:]) ** 2).sum(-1).ravel()])
    return a, b, wt


@numba.njit(cache=True, nogil=True)
def _root(x, parent):
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def _tree_filter(a, b, order, factors, vals):
    """Kruskal over the edges in ``order``, then two passes over the merge tree (see ``tree_propagation``).

    Returns (Σ_j f_ij v_j, Σ_j f_ij) per node (N×K, N) and which edges joined two components (the tree)."""
    n, k = vals.shape
    parent = np.arange(n)
    size = np.ones(n, np.int64)
    node_of = np.arange(n)  # the merge-tree node that stands for a union-find root's component
    left = np.empty(max(n - 1, 0), np.int64)
    right = np.empty(max(n - 1, 0), np.int64)
    fac = np.empty(max(n - 1, 0))
    used = np.zeros(len(a), np.bool_)
    m = 0
    for e in order:
        if m == n - 1:
            break
        ra, rb = _root(a[e], parent), _root(b[e], parent)
        if ra == rb:
            continue
        used[e] = True
        left[m], right[m], fac[m] = node_of[ra], node_of[rb], factors[e]
        if size[ra] < size[rb]:
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        node_of[ra] = n + m
        m += 1
    # bottom-up: each merge node's (Σ v, count) over its leaves
    sums = np.zeros((n + m, k + 1))
    sums[:n, :k] = vals
    sums[:n, k] = 1.0
    for j in range(m):
        for c in range(k + 1):
            sums[n + j, c] = sums[left[j], c] + sums[right[j], c]
    # top-down: a leaf gains f·(Σ v, count) of the other side at every merge above it
    gain = np.zeros((n + m, k + 1))
    for j in range(m - 1, -1, -1):
        f, l, r = fac[j], left[j], right[j]
        for c in range(k + 1):
            g = gain[n + j, c]
            gain[l, c] = g + f * sums[r, c]
            gain[r, c] = g + f * sums[l, c]
    num = vals + gain[:n, :k]
    den = 1.0 + gain[:n, k]
    return num, den, used


def tree_propagation(a: np.ndarray, b: np.ndarray, weights: np.ndarray, values: np.ndarray,
                     zeta: float) -> tuple[np.ndarray, np.ndarray]:
    """APro GP over the minimum spanning tree of the graph (a, b, weights) (Eq. 3–4):
    y_i = Σ_j v_j exp(−C(i,j)/ζ²) / Σ_j exp(−C(i,j)/ζ²), C(i,j) the largest weight on the tree path i–j (C(i,i) = 0).

    Computed in O(N log N + K·N): Kruskal's algorithm merges components A and B over a tree edge of weight w, and
    every pair (i∈A, j∈B) has C(i,j) = w, so each member of A gains exp(−w/ζ²)·(Σ_B v, |B|) and vice versa. The
    merges form a binary tree; one pass up it sums (Σ v, |·|) per merge, one pass down adds each merge's gains to
    the side below it, so a pixel's total is the sum over the merges above it. ``values`` N×K (K channels share the
    tree); returns (N×K float64, the boolean mask of the edges that form the tree).

    >>> y, tree = tree_propagation(np.array([0, 1]), np.array([1, 2]), np.array([0., 10.]), np.array([[1.], [0.], [0.]]), 1.0)
    >>> y.round(3).ravel().tolist(), tree.tolist()
    ([0.5, 0.5, 0.0], [True, True])
    """
    order = np.argsort(weights)  # ties in any order: minimax distances do not depend on which tree ties pick
    factors = np.exp(-np.asarray(weights, np.float64) / zeta**2)
    num, den, used = _tree_filter(np.asarray(a, np.int64), np.asarray(b, np.int64), order, factors,
                                  np.ascontiguousarray(values, np.float64))
    return num / den[:, None], used


def global_propagation(guide: np.ndarray, values: np.ndarray, zeta: float, features: np.ndarray | None = None,
                       zeta_f: float | None = None, relative: bool = False) -> np.ndarray:
    """APro GP (Eq. 3–4) of K×H×W ``values`` over the MST of the 4-connected grid of the H×W×D ``guide``;
    with ``zeta_f``, propagated again over the same tree with its edges re-weighted by the H×W×D' ``features``, or
    where none are given by the first pass's own K×H×W output (the paper's GP on low-level then high-level
    features; APro's released code re-weights by the output). ``relative``: the guide's edge weights in units of
    their median (``relative_edge_weights``, our deviation: ``apro.gp_edges``). Returns K×H×W float64.

    >>> g = np.array([[[0.], [0.], [10.]]])
    >>> global_propagation(g, np.array([[[1., 0., 0.]]]), zeta=1.0).round(3).tolist()
    [[[0.5, 0.5, 0.0]]]
    """
    h, w = guide.shape[:2]
    k = values.shape[0]
    a, b, wt = grid_edges(guide)
    if relative:
        wt = relative_edge_weights(wt)
    y, tree = tree_propagation(a, b, wt, values.reshape(k, -1).T, zeta)
    if zeta_f is not None:
        fa, fb, fw = grid_edges(y.reshape(h, w, k) if features is None else features)
        y, _ = tree_propagation(fa[tree], fb[tree], fw[tree], y, zeta_f)
    return y.T.reshape(k, h, w)


def relative_edge_weights(weights: np.ndarray) -> np.ndarray:
    """Edge weights divided by the median of the non-zero ones (unchanged where none is non-zero): in units of the
    image's typical neighbour distance, so that a ζ_g means the same on a noisy photograph and on a flat rendering.

    >>> relative_edge_weights(np.array([4., 0., 4., 9.])).tolist()
    [1.0, 0.0, 1.0, 2.25]
    """
    nonzero = weights[weights > 0]
    return weights / np.median(nonzero) if nonzero.size else weights


_THREADS: ThreadPoolExecutor | None = None


def batch_global_propagation(guides: np.ndarray, values: np.ndarray, zeta: float, features: np.ndarray | None = None,
                             zeta_f: float | None = None, relative: bool = False) -> np.ndarray:
    """``global_propagation`` of a batch (B×H×W×D guides, B×K×H×W values, B×H×W×D' features), the images in
    parallel threads (the compiled walk releases the GIL)."""
    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadPoolExecutor(max(1, torch.get_num_threads()))
    jobs = [_THREADS.submit(global_propagation, guides[i], values[i], zeta, None if features is None else features[i], zeta_f,
                            relative)
            for i in range(len(values))]
    return np.stack([j.result() for j in jobs])


# ------------------------------------------------------------------------------------------- LP


def local_propagation(image: torch.Tensor, values: torch.Tensor, zeta: float = 0.15, num_iter: int = 20,
                      kernel_size: int = 5) -> torch.Tensor:
    """APro LP (Eq. 5–6): y ← Σ_{j∈W(i)} ψ(i,j) y_j, ``num_iter`` times, on B×D×H×W images and B×K×H×W values.

    W(i) is the k×k window around i (centre included, pixels outside the image excluded),
    ψ(i,j) = exp(−‖I_i − I_j‖²/ζ²) / Σ_{j'∈W(i)} exp(−‖I_i − I_j'‖²/ζ²). Returns B×K×H×W (values' dtype, float32 math).

    >>> img = torch.tensor([[[[0., 0., 1.]]]])
    >>> local_propagation(img, torch.tensor([[[[1., 0., 0.]]]]), zeta=0.1, num_iter=1, kernel_size=3).round(decimals=3).tolist()
    [[[[0.5, 0.5, 0.0]]]]
    """
    img = image.float()
    y = values.float()
    h, w = img.shape[-2:]
    r = kernel_size // 2
    valid = F.pad(torch.ones(1, 1, h, w, device=img.device), [r] * 4)
    ip = F.pad(img, [r] * 4)
    offs = [(dy, dx) for dy in range(kernel_size) for dx in range(kernel_size)]
    wts = torch.cat([torch.exp(-((ip[..., dy:dy + h, dx:dx + w] - img) ** 2).sum(1, keepdim=True) / zeta**2)
                     * valid[..., dy:dy + h, dx:dx + w] for dy, dx in offs], 1)
    wts = wts / wts.sum(1, keepdim=True)
    for _ in range(num_iter):
        yp = F.pad(y, [r] * 4)
        out = torch.zeros_like(y)
        for j, (dy, dx) in enumerate(offs):  # in place: 3x faster than summing 25 temporaries
            out.addcmul_(wts[:, j:j + 1], yp[..., dy:dy + h, dx:dx + w])
        y = out
    return y.to(values.dtype)


# ------------------------------------------------------------------------------------------- the loss


def rgb01(images: torch.Tensor) -> torch.Tensor:
    """Network inputs (ImageNet-normalised B×3×H×W) back to RGB in [0, 1], the colour space of ζ_g and ζ_s."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return images.float() * std + mean


def propagation_guide(images: torch.Tensor, guide: Literal["rgb01", "normalised"]) -> torch.Tensor:
    """The image GP and LP propagate over (``apro.guide``): ``normalised`` the network's input itself,
    (x − 255·mean)/(255·std) on 0–255 pixels with ImageNet's mean/std, the released code's scale (an edge weight
    ≈ 19.6 times its RGB-in-[0, 1] value); ``rgb01`` RGB in [0, 1].

    >>> x = torch.zeros(1, 3, 1, 1)
    >>> propagation_guide(x, "normalised").flatten().tolist(), [round(v, 3) for v in propagation_guide(x, "rgb01").flatten().tolist()]
    ([0.0, 0.0, 0.0], [0.485, 0.456, 0.406])
    """
    return images.float() if guide == "normalised" else rgb01(images)


def resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners False, no antialiasing: ``F.interpolate``'s, as the released code's)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def image_numpy(image: np.ndarray, guide: Literal["rgb01", "normalised"]) -> np.ndarray:
    """An H×W×3 uint8 image in ``apro.guide``'s colour space, H×W×3 float64 (the pseudo labels' refinement)."""
    rgb = image.astype(np.float64) / 255.0
    return (rgb - IMAGENET_MEAN) / IMAGENET_STD if guide == "normalised" else rgb


def soft_pseudo_labels(probs: torch.Tensor, rgb: torch.Tensor, features: torch.Tensor | None, cfg: AProConfig) -> list[torch.Tensor]:
    """The targets Y of L_u for ``cfg.propagation`` from detached B×K×H×W probabilities (Table 4 / Table 7):
    ``gp``: [GP(P)]; ``lp``: [LP(P)]; ``gp-lp-p``: [GP(P), LP(P)]; ``gp-lp-c``: [LP(GP(P))]; ``lp-gp-c``: [GP(LP(P))].
    ``features`` (B×D×H×W or None) guide GP's high-level pass (``cfg.zeta_f``); None: its own image pass's output.
    ``rgb`` is the guide image in ``cfg.guide``'s colour space; with ``cfg.gp_size`` GP runs on that grid.

    The high-level pass of K > 1 classes: its edge weights Σ_c (y_a,c − y_b,c)² over the first pass's K channels
    (the released code's single mask channel is K = 1; docs/apro.md, "L_u on several classes")."""
    def gp(p: torch.Tensor) -> torch.Tensor:
        size = p.shape[-2:]
        guide, feats = rgb, features
        if cfg.gp_size is not None:  # the released code's fixed grid (misc.py:75), then back (box2mask_head.py:309)
            grid = (cfg.gp_size, cfg.gp_size)
            guide, p = resample(rgb.float(), grid), resample(p, grid)
            feats = None if features is None else resample(features.float(), grid)
        g = guide.permute(0, 2, 3, 1).cpu().double().numpy()
        f = None
        if feats is not None:
            f = F.normalize(feats.float(), dim=1).permute(0, 2, 3, 1).cpu().double().numpy()
        y = torch.from_numpy(batch_global_propagation(g, p.cpu().double().numpy(), cfg.zeta_g, f, cfg.zeta_f,
                                                      cfg.gp_edges == "relative")).to(p.device, p.dtype)
        return y if cfg.gp_size is None else resample(y, size)

    def lp(p: torch.Tensor) -> torch.Tensor:
        return local_propagation(rgb, p, cfg.zeta_s, cfg.num_iter, cfg.kernel_size)

    mode = cfg.propagation
    if mode == "none":
        return []
    if mode == "gp":
        return [gp(probs)]
    if mode == "lp":
        return [lp(probs)]
    if mode == "gp-lp-p":
        return [gp(probs), lp(probs)]
    return [lp(gp(probs))] if mode == "gp-lp-c" else [gp(lp(probs))]


def unary_l1(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """L_u for one target: the L1 distance between prediction and soft pseudo label, summed over classes and
    averaged over the pixels of ``region`` (B×H×W bool; None: every pixel), mean_{i∈R} Σ_c |P_ic − Y_ic|.

    >>> unary_l1(torch.tensor([[[[1., 0.]], [[0., 1.]]]]), torch.tensor([[[[0.5, 0.]], [[0.5, 1.]]]])).item()
    0.5
    >>> unary_l1(torch.tensor([[[[1., 0.]], [[0., 1.]]]]), torch.tensor([[[[0.5, 0.]], [[0.5, 1.]]]]), torch.tensor([[[True, False]]])).item()
    1.0
    """
    dist = (probs - target).abs().sum(1)
    if region is None:
        return dist.mean()
    return (dist * region).sum() / region.sum().clamp(min=1)


@dataclass
class AProLoss:
    """One APro training step: L = L_g + w·L_u (w = ``unary_weight``), L_g the partial cross-entropy on the
    labelled pixels (255 elsewhere), L_u = Σ over the targets of ``soft_pseudo_labels`` of ``unary_l1`` over the
    unlabelled pixels (as the reference code of APro's sparse-label setting and of TEL apply it: the labelled ones
    have L_g), the targets made at 1/``stride`` of the crop from the detached prediction (and the network's last
    features for GP)."""

    cfg: AProConfig
    steps: int = 0  # the schedule's length (``unary_from`` is a fraction of it)

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels = batch
        logits, feats = model.logits_and_features(images)
        partial = partial_cross_entropy(logits, labels)
        if step < self.cfg.unary_from * self.steps:
            zero = partial.detach() * 0
            return {"loss": partial, "partial_ce": partial.detach(), "unary": zero}
        probs = logits.float().softmax(1)
        rgb = propagation_guide(images, self.cfg.guide)
        if self.cfg.stride > 1:
            size = (images.shape[-2] // self.cfg.stride, images.shape[-1] // self.cfg.stride)
            probs, rgb = resample(probs, size), resample(rgb, size)
        guide = None  # the network's features guide GP's high-level pass only with high_level=features
        if self.cfg.zeta_f is not None and self.cfg.high_level == "features":
            guide = F.interpolate(feats.detach().float(), size=probs.shape[-2:], mode="bilinear", align_corners=False)
        unlabelled = F.interpolate(labels.eq(IGNORE_INDEX)[:, None].float(), size=probs.shape[-2:], mode="nearest")[:, 0] > 0
        with torch.no_grad():
            targets = soft_pseudo_labels(probs.detach(), rgb, guide, self.cfg)
        # the prediction each target is compared with: for GP on its own fixed grid, the prediction resampled to that
        # grid and back, as the released code's mask_preds_scaled (box2mask_head.py:310); otherwise P itself
        preds = [probs] * len(targets)
        if self.cfg.gp_size is not None and self.cfg.propagation in ("gp", "gp-lp-p"):
            preds[0] = resample(resample(probs, (self.cfg.gp_size, self.cfg.gp_size)), probs.shape[-2:])
        unary = sum((unary_l1(q, t, unlabelled) for q, t in zip(preds, targets)), probs.new_zeros(()))
        return {"loss": partial + self.cfg.unary_weight * unary, "partial_ce": partial.detach(), "unary": unary.detach()}


def refine_predictions(image: np.ndarray, probs: np.ndarray, cfg: AProConfig) -> np.ndarray:
    """A stored pseudo label's refinement: the K×H×W probabilities of an H×W×3 uint8 image through GP on the image
    (Eq. 3–4, edges as ``gp_edges`` says; with ``zeta_f`` and ``high_level=prediction`` its high-level pass) then LP
    (Eq. 5–6), in ``cfg.guide``'s colour space at the image's own size (``gp_size`` is training's); returns K×H×W
    float32. The released code has no such step (``paper``: ``refine_labels`` false)."""
    rgb = image_numpy(image, cfg.guide)
    y = global_propagation(rgb, probs.astype(np.float64), cfg.zeta_g, relative=cfg.gp_edges == "relative",
                           zeta_f=cfg.zeta_f if cfg.high_level == "prediction" else None)
    t = torch.from_numpy(rgb.transpose(2, 0, 1)).float()[None]
    return local_propagation(t, torch.from_numpy(y).float()[None], cfg.zeta_s, cfg.num_iter, cfg.kernel_size)[0].numpy()
