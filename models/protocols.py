"""What a stage needs from a model, as protocols: a stage is written against these, never against a method.

Each registered model provides the ones its flows use (``tests/test_models.py`` checks them).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn


@runtime_checkable
class Trainable(Protocol):
    """Any network a training stage trains: two parameter groups (the heads learn ``head_lr_mult`` faster)."""

    def backbone_parameters(self) -> list[nn.Parameter]: ...

    def head_parameters(self) -> list[nn.Parameter]: ...


@runtime_checkable
class ClassMapModel(Protocol):
    """An image classifier with class maps: ``class_scores`` gives B×C image scores (what its classification loss
    trains), ``class_maps`` B×C×h×w maps (the CAM)."""

    def class_scores(self, x: torch.Tensor) -> torch.Tensor: ...

    def class_maps(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class AttentionModel(Protocol):
    """A ViT whose patch-to-patch attention can serve as an affinity."""

    num_layers: int

    def grid(self, x: torch.Tensor) -> tuple[int, int]: ...

    def patch_attention(self, x: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor: ...


@runtime_checkable
class AffinityModel(Protocol):
    """A network that gives a dense affinity over its feature grid: ``affinity(x)`` → (B×N×N, (h, w))."""

    def affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]: ...


@runtime_checkable
class SparseAffinityModel(Protocol):
    """A network whose affinity is local: ``sparse_affinity(x)`` → (one sparse N×N matrix an image, (h, w)), what
    the random walk of ``stages/random_walk_seeds.py`` walks (``affinity.source = network``)."""

    def sparse_affinity(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]: ...


@runtime_checkable
class Segmenter(Protocol):
    """A segmentation network: ``forward`` gives B×21×H×W logits at the input's size."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
