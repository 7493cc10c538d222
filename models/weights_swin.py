"""Microsoft's released Swin files (``swin_tiny_patch4_window7_224.pth``, microsoft/Swin-Transformer) → timm's names.

Microsoft's ``SwinTransformer`` merges patches at the *end* of a stage (``layers.{i}.downsample``, i = 0..2) and stores
two buffers per block: ``attn.relative_position_index`` (every block) and ``attn_mask`` (the shifted blocks); its
file wraps the state dict in ``{"model": ...}`` and holds the ImageNet classifier ``head.weight`` / ``head.bias``.
timm's ``SwinTransformer`` merges at the *start* of the next stage (``layers.{i+1}.downsample``, the same
concatenation order x₀₀, x₁₀, x₀₁, x₁₁) and recomputes both buffers from the window size (not in its state dict), as
timm's own ``swin_transformer.checkpoint_filter_fn`` does. The classifier is dropped by name (a feature backbone has
none); the relative-position tables must have the backbone's window (a table of another window is refused as
mis-shaped: another network).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from models.weights import Conversion, Layout, convert_by_name, register_layout

MS_SWIN_CLASSIFIER = ("head.weight", "head.bias")


def ms_swin_name(key: str) -> str:
    """One Microsoft Swin key → timm's name.

    >>> ms_swin_name("layers.0.downsample.reduction.weight"), ms_swin_name("layers.3.blocks.1.attn.qkv.bias")
    ('layers.1.downsample.reduction.weight', 'layers.3.blocks.1.attn.qkv.bias')
    """
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", key)


def ms_swin_dropped(key: str) -> str | None:
    """Why a key of Microsoft's Swin file is not loaded (None: it is)."""
    if key in MS_SWIN_CLASSIFIER:
        return "the ImageNet classifier (a feature backbone has none)"
    if key.endswith("relative_position_index") or key.endswith("attn_mask"):
        return "buffers timm recomputes from the window size"
    return None


def convert_ms_swin(tensors: dict[str, torch.Tensor], _backbone: Mapping[str, torch.Tensor]) -> Conversion:
    return convert_by_name(tensors, ms_swin_name, ms_swin_dropped)


MS_SWIN = register_layout(Layout(
    "microsoft-swin", "swin", "Microsoft's released swin_*.pth (microsoft/Swin-Transformer; SWTformer's Swin-T)",
    lambda keys: "layers.0.downsample.reduction.weight" in keys and "patch_embed.proj.weight" in keys, convert_ms_swin))
