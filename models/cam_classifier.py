"""A ViT classifier whose class-activation maps come from its patch tokens (the CAM baseline).

Its config is the ``model`` section (the ViT, shared with ACR's class-token classifier) and the
``train_classifier`` section (the schedule of every classifier-training stage).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from models.backbones import AttentionRecorder, TokenGrid, create_vit
from models.registry import ModelSpec, register_model

from pipeline.config import Count, SMOKE_TRAIN, Section, TrainConfig, config_section, register_section, timm_model


@config_section("model", profiles={
    "smoke": {"backbone": "vit_small_patch16_224", "weights": None, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
    "paper": {"backbone": "vit_base_patch16_384", "pretrained": True, "weights": None, "patch_size": None, "embed_dim": None, "depth": None,
              "num_heads": None, "pooling": "gap"},
})
class ClassifierConfig(Section):
    """The classifier: a timm ViT (from scratch, ImageNet weights through timm, or a local file) and its pooling."""

    # any timm ViT name; the default is the ViT-hybrid family (a CNN stem before the blocks), as ACR's paper
    backbone: timm_model("vision_transformer", "vision_transformer_hybrid", example="vit_small_patch16_224") = "vit_tiny_r_s16_p8_224"
    pretrained: bool = False  # ImageNet weights through timm (needs the hub)
    # a local .safetensors / .pth file of backbone weights, or standin:NAME (models/standins.py); null: from scratch
    weights: str | None = "standin:vit_hybrid"
    weights_ignore: list[str] = []  # glob patterns of the weights file's tensors to drop (e.g. [head.*]); the rest loads strictly (docs/weights.md)
    patch_size: Count | None = 2  # overrides of timm's ViT (None keeps timm's); a hybrid's patch is on its stem's features
    embed_dim: Count | None = 128
    depth: Count | None = 4
    num_heads: Count | None = 4
    pooling: Literal["gap", "gmp", "topk"] = "topk"  # of the patch-token class maps (the CAM classifier)
    topk: Annotated[float, Field(gt=0, le=1)] = 0.1  # fraction of locations averaged by top-k pooling

    def vit(self) -> dict:
        """The ``create_vit`` arguments of this ViT."""
        return dict(name=self.backbone, pretrained=self.pretrained, weights=self.weights, weights_ignore=list(self.weights_ignore), patch_size=self.patch_size,
                    embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads)


register_section("train_classifier", TrainConfig, TrainConfig(steps=1000, lr=5e-4), profiles={
    "smoke": {**SMOKE_TRAIN, "lr": 2e-3},
    "paper": {"steps": 20000, "batch_size": 4, "crop_size": 384, "scale_range": [0.5, 2.0], "lr": 6e-5,
              "weight_decay": 0.01, "warmup_steps": 1500, "checkpoint_every": 1000, "log_every": 50},
})


def pool_scores(cams: torch.Tensor, pooling: str = "gap", topk: float = 0.1) -> torch.Tensor:
    """B×C×h×w maps (class maps or features) → B×C: global average, global max, or mean of the top-k fraction."""
    flat = cams.flatten(2)
    if pooling == "gap":
        return flat.mean(-1)
    if pooling == "gmp":
        return flat.amax(-1)
    k = max(1, int(round(topk * flat.shape[-1])))
    return flat.topk(k, dim=-1).values.mean(-1)


class CAMClassifier(nn.Module):
    """ViT patch tokens → 1×1 conv class maps (CAM) → pooled multi-label scores."""

    def __init__(self, backbone: nn.Module, num_classes: int = 20, pooling: str = "gap", topk: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(backbone.embed_dim, num_classes, 1, bias=False)
        self.pooling, self.topk = pooling, topk
        self.attention = AttentionRecorder(backbone.blocks)
        self.tokens = TokenGrid(backbone.patch_embed)

    @property
    def patch_size(self) -> int:
        return self.tokens.stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """B×D×h×w patch feature map (h = ⌈H/patch⌉ for a plain ViT; a hybrid's stem decides its own)."""
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens:]
        h, w = self.tokens(x)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_scores(self.class_maps(x), self.pooling, self.topk)

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())


@register_model
def vit_cam_classifier(backbone: dict, img_size: int, num_classes: int = 20, pooling: str = "gap", topk: float = 0.1) -> CAMClassifier:
    vit = create_vit(img_size=img_size, **backbone)
    return CAMClassifier(vit, num_classes, pooling, topk)


def cam_classifier_spec(m: ClassifierConfig, img_size: int, num_classes: int = 20) -> ModelSpec:
    """The CAM classifier of a ``model`` section, built for crops of ``img_size``, scoring ``num_classes``
    foreground classes (the dataset's: VOC 20, COCO 80)."""
    return ModelSpec("vit_cam_classifier", dict(backbone=m.vit(), img_size=img_size, num_classes=num_classes,
                                                pooling=m.pooling, topk=m.topk))


def multiscale_maps(map_fn, image: torch.Tensor, scales: list[float], flip: bool, input_size: int | None = None,
                    align_corners: bool = False) -> torch.Tensor:
    """Sum over scales (and horizontal flips) of ``map_fn(batch)`` (B×K×h×w maps), upsampled to the image: K×H×W.

    ``image`` is one normalised 3×H×W tensor (on the model's device), or a B×3×H×W batch of images of one size
    (→ B×K×H×W, each image's maps as if alone: a GPU takes several images per forward pass). The flipped
    copies' maps are flipped back. The maps are summed in float32 whatever precision ``map_fn`` runs in.
    ``input_size``: the image is first resized (bilinear) to that square and the scales apply to it (ACR's released
    inference, ACR_WSSS ``myTool.py:1383``); ``align_corners``: of the maps' upsampling to H×W (released: true,
    ``infer_cam.py:187``).
    """
    single = image.ndim == 3
    images = image[None] if single else image
    b, (h, w) = images.shape[0], images.shape[-2:]
    if input_size is not None:
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
    total = 0
    for s in scales:
        x = images if s == 1 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        maps = F.interpolate(map_fn(batch).float(), size=(h, w), mode="bilinear", align_corners=align_corners)
        total = total + (maps[:b] + maps[b:].flip(-1) if flip else maps)
    return total[0] if single else total


@torch.no_grad()
def multiscale_cams(model: torch.nn.Module, image: torch.Tensor, scales: list[float], flip: bool) -> torch.Tensor:
    """Sum over scales (and horizontal flips) of ReLU class maps, upsampled to the image: C×H×W."""
    return multiscale_maps(lambda b: F.relu(model.class_maps(b)), image, scales, flip)


def normalise_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each map divided by its maximum (→ [0, 1]), as in the CAM papers."""
    return cams / (cams.flatten(1).amax(1).view(-1, 1, 1) + eps)


def minmax_normalise_cams(cams: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each map as (x − min)/(max − min + ε) over its pixels (ACR's released seeds, ACR_WSSS ``infer_cam.py:210``).

    >>> minmax_normalise_cams(torch.tensor([[[2.0, 4.0, 6.0]]]), eps=0.0).tolist()
    [[[0.0, 0.5, 1.0]]]
    """
    flat = cams.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    return (cams - lo) / (hi - lo + eps)
