"""Segmentation networks: a timm feature backbone with a DeepLab ASPP head or a SegFormer MLP head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import create_feature_backbone
from models.registry import ModelSpec, register_model
from pipeline.config import SegmentationConfig
from pipeline.voc import IGNORE_INDEX


class ASPPHead(nn.Module):
    """DeepLab-v2 ASPP: parallel 3×3 convolutions with dilations (6, 12, 18, 24), summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for b in self.branches:
            nn.init.normal_(b.weight, 0, 0.01)
            nn.init.zeros_(b.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        return sum(b(x) for b in self.branches)


class MLPHead(nn.Module):
    """SegFormer all-MLP decoder: per-level linear embedding, upsample to the finest level, fuse, classify."""

    def __init__(self, in_channels: list[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(embed_dim * len(in_channels), embed_dim, 1, bias=False),
                                  nn.BatchNorm2d(embed_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        ups = [F.interpolate(e(f), size=size, mode="bilinear", align_corners=False) for e, f in zip(self.embed, feats)]
        return self.classify(self.drop(self.fuse(torch.cat(ups, 1))))


class SegmentationNet(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits at the input's size (as ``forward``) and the backbone's deepest features (B×D×h×w), the
        high-level features APro's GP propagates over."""
        feats = self.backbone(x)
        logits = F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, feats[-1]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def segmentation_net(backbone: str = "resnet18", head: str = "aspp", num_classes: int = 21, output_stride: int = 8,
                     pretrained: bool = False, weights: str | None = None, channels: list[int] | None = None,
                     weights_ignore: list[str] | None = None) -> SegmentationNet:
    bb = create_feature_backbone(backbone, output_stride, pretrained, weights, channels, weights_ignore or ())
    chans = bb.feature_info.channels()
    if head == "aspp":
        # the DeepLab head reads the deepest level; the MLP head reads levels from stride 4 down
        h: nn.Module = ASPPHead(chans[-1], num_classes)
    else:
        h = MLPHead(chans[1:] if len(chans) > 4 else chans, num_classes)
        if len(chans) > 4:
            bb = _DropFirst(bb)
    return SegmentationNet(bb, h)


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled pixels only (255 ignored) — on dense labels the usual loss, on points and
    scribbles the partial cross-entropy of the sparse-label papers. A batch without a labelled pixel gives 0 (with
    the graph kept), not NaN.

    >>> partial_cross_entropy(torch.zeros(1, 2, 1, 2), torch.tensor([[[255, 255]]])).item()
    0.0
    """
    if not bool(labels.ne(IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def segmentation_spec(s: SegmentationConfig, num_classes: int = 21) -> ModelSpec:
    """The segmentation network of the ``segmentation`` section for ``num_classes`` classes, background included
    (VOC 21, COCO 81)."""
    return ModelSpec("segmentation_net", dict(backbone=s.backbone, head=s.head, num_classes=num_classes, output_stride=s.output_stride,
                                              pretrained=s.pretrained, weights=s.weights, channels=s.channels,
                                              weights_ignore=list(s.weights_ignore)))


class _DropFirst(nn.Module):
    """Skip a backbone's stride-2 stem level, keeping levels from stride 4 (as SegFormer's decoder does)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.inner = backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.inner(x)[1:]
