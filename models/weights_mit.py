"""SegFormer's released MiT files (``mit_b0.pth`` … ``mit_b5.pth``, NVlabs/SegFormer) → timm's ``pvt_v2`` names.

SegFormer's ``MixVisionTransformer`` (``mmseg/models/backbones/mix_transformer.py:203-254``) names its parts
``patch_embed{1..4}``, ``block{1..4}.{j}`` and ``norm{1..4}``, the Mix-FFN's depthwise conv ``mlp.dwconv.dwconv``
(``DWConv`` wraps an ``nn.Conv2d`` called ``dwconv``, line 358-361). timm's ``PyramidVisionTransformerV2`` holds the
same tensors as ``patch_embed``, ``stages.{i-1}.downsample`` (i > 1), ``stages.{i-1}.blocks.{j}``,
``stages.{i-1}.norm`` and ``mlp.dwconv``. The released ImageNet files also hold the classifier ``head.weight`` /
``head.bias`` (1000 × C₄), which AFA and SASFormer pop before loading strictly (rulixiang/afa
``wetr/model_attn_aff.py:24-27``; su-hui-zz/SASFormer ``lib/models/nets/segformer.py:26-29``): dropped here by name.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from models.weights import Conversion, Layout, convert_by_name, register_layout

#: the released files' ImageNet classifier, popped by the official code before loading
SEGFORMER_CLASSIFIER = ("head.weight", "head.bias")


def segformer_mit_name(key: str) -> str:
    """One SegFormer MiT key → timm's pvt_v2 name (a key of no known part is returned unchanged).

    >>> segformer_mit_name("block1.0.mlp.dwconv.dwconv.weight"), segformer_mit_name("patch_embed3.proj.weight")
    ('stages.0.blocks.0.mlp.dwconv.weight', 'stages.2.downsample.proj.weight')
    >>> segformer_mit_name("norm4.bias"), segformer_mit_name("patch_embed1.norm.weight")
    ('stages.3.norm.bias', 'patch_embed.norm.weight')
    """
    if key.startswith("patch_embed1."):
        return "patch_embed." + key[len("patch_embed1."):]
    if m := re.match(r"patch_embed(\d+)\.(.*)", key):
        return f"stages.{int(m[1]) - 1}.downsample.{m[2]}"
    if m := re.match(r"block(\d+)\.(\d+)\.(.*)", key):
        return f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3].replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')}"
    if m := re.match(r"norm(\d+)\.(.*)", key):
        return f"stages.{int(m[1]) - 1}.norm.{m[2]}"
    return key


def convert_segformer_mit(tensors: dict[str, torch.Tensor], _backbone: Mapping[str, torch.Tensor]) -> Conversion:
    """Every key of a SegFormer MiT file under timm's names; the ImageNet classifier dropped."""
    return convert_by_name(tensors, segformer_mit_name, lambda k: (
        "the ImageNet classifier, popped by AFA's and SASFormer's code before loading" if k in SEGFORMER_CLASSIFIER else None))


SEGFORMER_MIT = register_layout(Layout(
    "segformer-mit", "mit", "SegFormer's released mit_b*.pth (NVlabs/SegFormer; AFA and SASFormer load them)",
    lambda keys: "patch_embed1.proj.weight" in keys and "block1.0.attn.q.weight" in keys, convert_segformer_mit))
