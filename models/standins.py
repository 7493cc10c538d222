"""Pretrained stand-ins: small backbones of every family the ``default`` profiles use, pretrained here.

The papers start from ImageNet weights, and no weights can be downloaded on the machines this project
is developed on. So each family gets a small stand-in, pretrained by the ``pretrain`` flow on the
procedural classification corpus of ``pipeline/corpus.py`` (32 classes of outline × pattern, none of
them the segmentation data's), as ImageNet is other than VOC. The weights ship in
``models/pretrained/NAME.safetensors`` (float16, under 5 MB each) beside ``NAME.json``, their
provenance: the command, the corpus, the schedule, the validation accuracy, torch/timm versions and
the file's SHA-256. A config names one as ``weights: standin:NAME``; ``null`` trains from scratch.

The architecture of each is fixed here, once; the config keys that start from it must describe the
same network (the loader refuses a stand-in that does not fit, naming the architecture it was made for).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import timm
import torch
import torch.nn as nn
from pydantic import Field

from models.backbones import create_vit
from models.registry import register_model

from pipeline.config import Count, Section, Seed, TrainConfig, config_section


@dataclass(frozen=True)
class StandIn:
    """A stand-in backbone: its timm model, the constructor arguments that make it small, who starts from it."""

    name: str
    timm_name: str
    architecture: dict = field(default_factory=dict)
    used_by: str = ""

    def config(self) -> dict:
        """The config keys of a section that starts from this stand-in: the backbone, its overrides, the weights."""
        return {"backbone": self.timm_name, **self.architecture, "weights": f"standin:{self.name}"}


STANDINS: dict[str, StandIn] = {s.name: s for s in (  # cheapest first: the pretrain flow runs them in this order
    StandIn("resnet", "resnet18", dict(channels=[32, 64, 128, 192]),
            "the segmentation network and the AffinityNet (segmentation.weights, affinity.weights)"),
    StandIn("mit", "pvt_v2_b1", dict(embed_dims=[32, 64, 128, 160], depths=[1, 1, 2, 2], num_heads=[1, 2, 4, 4]),
            "SASFormer's SegFormer encoder (sasformer.weights); afa_voc's Mix Transformer on request (afa.weights=standin:mit)"),
    StandIn("swin", "swin_tiny_patch4_window7_224", dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=6),
            "the Swin Transformer family (SWTformer)"),
    StandIn("vit_hybrid", "vit_tiny_r_s16_p8_224", dict(patch_size=2, embed_dim=128, depth=4, num_heads=4),
            "the classifiers of cam_voc and acr_voc (model.weights), ACR's paper family"),
    StandIn("vit", "vit_small_patch16_224", dict(patch_size=8, embed_dim=128, depth=4, num_heads=4),
            "none by default: the plain-ViT family did not learn in 1000 steps here (README, Pretrained stand-ins)"),
)}
VIT_FAMILY = ("vit", "vit_hybrid")


@config_section("pretrain", profiles={
    "smoke": {"train_images": 64, "val_images": 32,
              "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 2}},
})
class PretrainConfig(Section):
    """The ``pretrain`` flow: every stand-in trained on the procedural corpus, then scored on its val split."""

    corpus_seed: Seed = 0  # the corpus is a function of this seed (pipeline/corpus.py)
    train_images: Count = 100_000  # corpus train indices drawn from (each step takes the next batch of a permutation)
    val_images: Count = 2_000
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    train: TrainConfig = TrainConfig(steps=1000, batch_size=64, crop_size=96, scale_range=(0.8, 1.2), hflip=True,
                                     color_jitter=0.2, lr=1e-3, head_lr_mult=1.0, weight_decay=0.05, warmup_steps=60,
                                     poly_power=1.0, checkpoint_every=100, log_every=20)


def standin_backbone(name: str, img_size: int) -> nn.Module:
    """The backbone of stand-in ``name`` from scratch, as its users build it (its state dict is what ships)."""
    s = STANDINS[name]
    if name in VIT_FAMILY:
        return create_vit(s.timm_name, img_size, **s.architecture)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in s.architecture.items()}
    if name == "swin":
        kwargs["img_size"] = img_size
    return timm.create_model(s.timm_name, num_classes=0, **kwargs)


class StandInClassifier(nn.Module):
    """A stand-in backbone's pooled features (timm's own pooling) → a linear classifier over the corpus classes."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


@register_model
def standin_classifier(standin: str, img_size: int, num_classes: int) -> StandInClassifier:
    if standin not in STANDINS:
        raise KeyError(f"unknown stand-in {standin!r}; known: {', '.join(STANDINS)}")
    return StandInClassifier(standin_backbone(standin, img_size), num_classes)
