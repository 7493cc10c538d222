"""AffinityNet in the PSA manner (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level
Supervision", CVPR 2018), on a timm CNN feature pyramid.

Features of the last three levels are projected (1×1 conv, GroupNorm, ELU), brought to the
stride-8 grid and concatenated into f; the affinity of two positions is
a_ij = exp(−‖f_i − f_j‖₁ / D) (PSA Eq. 1; the channel mean, as in the reference code).
Training uses pairs within a radius whose labels are both confident (PSA Eq. 2–6).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import create_feature_backbone
from models.pairs import pair_labels, pair_offsets, radius_mask
from models.registry import ModelSpec, register_model
from pipeline.config import BkgBand, Count, FeatureBackboneName, LayerIndex, NonNegInt, Positive, SMOKE_TRAIN, Section, TrainConfig, config_section
from pipeline.voc import IGNORE_INDEX


@config_section("affinity", profiles={"smoke": {"weights": None, "train": {**SMOKE_TRAIN, "steps": 40}}})
class AffinityConfig(Section):
    """Offline affinity (PSA manner) and the random walk of the seeds over it (ACR step 3)."""

    source: Literal["network", "attention"] = "network"  # a trained AffinityNet, or the ViT's own patch attention
    backbone: FeatureBackboneName = "resnet18"  # timm CNN with features_only (paper: ResNet-38 / ResNet-50)
    channels: list[Count] | None = [32, 64, 128, 192]  # a timm ResNet's stage widths (None: the model's own)
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    weights: str | None = "standin:resnet"  # a local file, or standin:NAME (models/standins.py); null: from scratch
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    dims: tuple[Count, Count, Count] = (32, 64, 128)  # embedding channels from the last three feature levels
    radius: Count = 5  # pairs within this radius (feature pixels, PSA's ‖Δ‖ < r) are trained and propagated over
    label_seeds: Literal["unrefined", "refined"] = "unrefined"  # ACR*: seeds without affinity refinement
    bkg_band: BkgBand = (0.05, 0.3)  # (low, high) background scores of the confident labels: fg above high, bg below low
    label_refine: list[Literal["par", "crf"]] = ["par"]
    train: TrainConfig = TrainConfig(steps=400, batch_size=8, crop_size=96, lr=2e-3, head_lr_mult=10.0)
    beta: Positive = 8.0  # random walk: A^β
    log_t: NonNegInt = 5  # random walk: T^(2^log_t)
    attention_layers: list[LayerIndex] | None = None  # source=attention: blocks averaged (None: all)


class AffinityNet(nn.Module):
    def __init__(self, backbone: nn.Module, dims: tuple[int, ...] = (64, 128, 256), radius: int = 5) -> None:
        super().__init__()
        self.backbone = backbone
        self.radius = radius
        chans = backbone.feature_info.channels()[-len(dims):]
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.GroupNorm(min(4, d), d), nn.ELU())
                                  for c, d in zip(chans, dims))
        self.fuse = nn.Sequential(nn.Conv2d(sum(dims), sum(dims), 1, bias=False), nn.ELU())
        self.stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Affinity features B×D×⌈H/8⌉×⌈W/8⌉."""
        feats = self.backbone(x)[-len(self.proj):]
        size = (math.ceil(x.shape[-2] / self.stride), math.ceil(x.shape[-1] / self.stride))
        f = [F.interpolate(p(t), size=size, mode="bilinear", align_corners=False) for p, t in zip(self.proj, feats)]
        return self.fuse(torch.cat(f, 1))

    def affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Dense affinity B×N×N over the stride-8 grid (zero beyond the radius) and the grid (h, w)."""
        feats = self(x)
        return torch.stack([dense_affinity(f, self.radius) for f in feats]), tuple(feats.shape[-2:])

    def sparse_affinity(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """The affinity of ``affinity`` as one sparse N×N matrix per image (only the pairs within the radius) and the grid."""
        feats = self(x)
        return [sparse_affinity(f, self.radius) for f in feats], tuple(feats.shape[-2:])

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.proj.parameters()) + list(self.fuse.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def affinity_net(backbone: str = "resnet18", dims: tuple[int, ...] = (64, 128, 256), pretrained: bool = False,
                 weights: str | None = None, radius: int = 5, channels: list[int] | None = None,
                 weights_ignore: list[str] | None = None) -> AffinityNet:
    return AffinityNet(create_feature_backbone(backbone, 8, pretrained, weights, channels, weights_ignore or ()), tuple(dims), radius)


def affinity_spec(a: AffinityConfig) -> ModelSpec:
    """The AffinityNet of an ``affinity`` section."""
    return ModelSpec("affinity_net", dict(backbone=a.backbone, dims=list(a.dims), pretrained=a.pretrained,
                                          weights=a.weights, radius=a.radius, channels=a.channels,
                                          weights_ignore=list(a.weights_ignore)))


def _shifted(t: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(t at p, t at p + (dy, dx)) over the positions p where both lie inside: two ...×h′×w′ views."""
    h, w = t.shape[-2:]
    x0, x1 = max(0, -dx), w - max(0, dx)
    return t[..., 0:h - dy, x0:x1], t[..., dy:h, x0 + dx:x1 + dx]


def pairwise_affinity(feats: torch.Tensor, offsets: list[tuple[int, int]]) -> list[torch.Tensor]:
    """a(p, p+o) = exp(−mean_c |f_c(p) − f_c(p+o)|) for each offset: a list of B×h′×w′ maps (PSA Eq. 1)."""
    return [torch.exp(-(a - b).abs().mean(1)) for a, b in (_shifted(feats, dy, dx) for dy, dx in offsets)]


def affinity_loss(affinities: list[torch.Tensor], labels: torch.Tensor, offsets: list[tuple[int, int]], eps: float = 1e-5) -> dict:
    """PSA's balanced affinity loss (Eq. 3–6): L = ¼L⁺_fg + ¼L⁺_bg + ½L⁻.

    ``labels`` B×h×w at feature resolution (0 background, 1..20 classes, 255 ignored). A pair is
    positive when both labels agree (foreground or background), negative when they differ, and
    left out when either is ignored (``models.pairs.pair_labels``). L⁺ = −mean log a, L⁻ = −mean log(1 − a).
    """
    fg, bg, neg = [], [], []
    for a, (dy, dx) in zip(affinities, offsets):
        la, lb = _shifted(labels, dy, dx)
        pairs = pair_labels(la, lb)
        fg.append(-torch.log(a[(pairs == 1) & (la > 0)] + eps))
        bg.append(-torch.log(a[(pairs == 1) & (la == 0)] + eps))
        neg.append(-torch.log(1 + eps - a[pairs == 0]))

    def mean(parts):
        t = torch.cat(parts)
        return t.mean() if t.numel() else affinities[0].sum() * 0

    l_fg, l_bg, l_neg = mean(fg), mean(bg), mean(neg)
    return {"loss": l_fg / 4 + l_bg / 4 + l_neg / 2, "fg": l_fg, "bg": l_bg, "neg": l_neg}


def dense_affinity(feats: torch.Tensor, radius: int) -> torch.Tensor:
    """N×N affinity of one D×h×w feature map: exp(−mean_c|f_i − f_j|) for ‖p_i − p_j‖ < radius, else 0 (a_ii = 1)."""
    d, h, w = feats.shape
    f = feats.reshape(d, -1).T
    near = radius_mask(h, w, radius, "euclidean", feats.device)
    aff = torch.exp(-torch.cdist(f, f, p=1) / d)
    return torch.where(near, aff, aff.new_zeros(()))


def sparse_affinity(feats: torch.Tensor, radius: int) -> torch.Tensor:
    """``dense_affinity`` as a sparse COO N×N matrix holding only the pairs within ``radius`` (PSA Eq. 1).

    a_ij = exp(−mean_c|f_i − f_j|) for ‖p_i − p_j‖ < radius, a_ii = 1: one ``pairwise_affinity`` map per offset of
    ``pair_offsets``, stored at (i, j) and (j, i). At radius 5 that is 81 entries a row instead of N: on COCO's
    640×480 (N = 4,800 at stride 8) 60× fewer, and O(N·D) work instead of ``cdist``'s O(N²·D).

    >>> a = sparse_affinity(torch.tensor([[[0., 1., 3.]]]), radius=2)
    >>> a.to_dense().log().abs().round(decimals=4).tolist()  # mean |f_i − f_j|; inf: beyond the radius
    [[0.0, 1.0, inf], [1.0, 0.0, 2.0], [inf, 2.0, 0.0]]
    """
    d, h, w = feats.shape
    index = torch.arange(h * w, device=feats.device).reshape(h, w)
    rows, cols, values = [index.flatten()], [index.flatten()], [feats.new_ones(h * w)]
    offsets = pair_offsets(radius, "euclidean")
    for (dy, dx), a in zip(offsets, pairwise_affinity(feats[None], offsets)):
        i, j = (t.flatten() for t in _shifted(index, dy, dx))
        rows += [i, j]
        cols += [j, i]
        values += [a[0].flatten()] * 2
    return torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(values),
                                   (h * w, h * w), check_invariants=False).coalesce()  # in range by construction


def labels_at_stride(labels: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Labels B×H×W sampled at the centres of the stride cells → B×h×w (cells past the image get 255)."""
    b, H, W = labels.shape
    out = torch.full((b, *size), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
    sub = labels[:, stride // 2::stride, stride // 2::stride][:, :size[0], :size[1]]
    out[:, :sub.shape[1], :sub.shape[2]] = sub
    return out
