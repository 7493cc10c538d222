"""AffinityNet in the PSA manner (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level
Supervision", CVPR 2018), on a timm CNN feature pyramid.

Features of the last three levels are projected (1×1 conv, GroupNorm, ELU), brought to the
stride-8 grid and concatenated into f; the affinity of two positions is
a_ij = exp(−‖f_i − f_j‖₁ / D) (PSA Eq. 1; the channel mean, as in the reference code).
Training uses pairs within a radius whose labels are both confident (PSA Eq. 2–6).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import create_feature_backbone
from models.registry import register_model

IGNORE = 255


class AffinityNet(nn.Module):
    def __init__(self, backbone: nn.Module, dims: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        self.backbone = backbone
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

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.proj.parameters()) + list(self.fuse.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def affinity_net(backbone: str = "resnet18", dims: tuple[int, ...] = (64, 128, 256), pretrained: bool = False,
                 weights: str | None = None) -> AffinityNet:
    return AffinityNet(create_feature_backbone(backbone, 8, pretrained, weights), tuple(dims))


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) to the neighbours within ``radius`` (‖o‖ < radius), one of each ± pair (PSA's half plane).

    >>> pair_offsets(2)
    [(0, 1), (1, -1), (1, 0), (1, 1)]
    """
    out = [(0, dx) for dx in range(1, radius)]
    out += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius]
    return out


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
    left out when either is ignored. L⁺ = −mean log a, L⁻ = −mean log(1 − a).
    """
    fg, bg, neg = [], [], []
    for a, (dy, dx) in zip(affinities, offsets):
        la, lb = _shifted(labels, dy, dx)
        valid = (la != IGNORE) & (lb != IGNORE)
        same = valid & (la == lb)
        fg.append(-torch.log(a[same & (la > 0)] + eps))
        bg.append(-torch.log(a[same & (la == 0)] + eps))
        neg.append(-torch.log(1 + eps - a[valid & (la != lb)]))

    def mean(parts):
        t = torch.cat(parts)
        return t.mean() if t.numel() else affinities[0].sum() * 0

    l_fg, l_bg, l_neg = mean(fg), mean(bg), mean(neg)
    return {"loss": l_fg / 4 + l_bg / 4 + l_neg / 2, "fg": l_fg, "bg": l_bg, "neg": l_neg}


def dense_affinity(feats: torch.Tensor, radius: int) -> torch.Tensor:
    """N×N affinity of one D×h×w feature map: exp(−mean_c|f_i − f_j|) for ‖p_i − p_j‖ < radius, else 0 (a_ii = 1)."""
    d, h, w = feats.shape
    f = feats.reshape(d, -1).T
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    near = torch.cdist(pos, pos) < radius
    aff = torch.exp(-torch.cdist(f, f, p=1) / d)
    return torch.where(near, aff, torch.zeros((), dtype=aff.dtype))


def labels_at_stride(labels: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Labels B×H×W sampled at the centres of the stride cells → B×h×w (cells past the image get 255)."""
    b, H, W = labels.shape
    out = torch.full((b, *size), IGNORE, dtype=labels.dtype)
    sub = labels[:, stride // 2::stride, stride // 2::stride][:, :size[0], :size[1]]
    out[:, :sub.shape[1], :sub.shape[2]] = sub
    return out
