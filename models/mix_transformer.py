"""The Mix Transformer (MiT) of SegFormer as AFA and SASFormer use it: ``mit_b0`` … ``mit_b5`` registered in timm on
timm's ``PyramidVisionTransformerV2`` with SegFormer's hyperparameters (``MIT_VARIANTS``, ``MIT_COMMON``; the paper
profiles), or timm's own ``pvt_v2_b*`` (the same family with other MLP ratios; the ``mit`` stand-in). Initial
weights: SegFormer's released ``mit_b*.pth`` loaded strictly (``models/weights_mit.py``, docs/weights.md).

AFA keeps the last stage at 1/16: its patch merging runs at stride 1 (``output_stride=16``). For
small images ``output_stride=8`` also runs the third stage's merging at stride 1. The last stage's
spatial reduction ratio is 1, so its blocks' softmax attention is the full N×N matrix; those maps
are recorded (in the graph) for AFA's affinity. ``record_all`` records every stage's blocks (SASFormer's
affinity loss reads all four): a stage with spatial reduction ratio R attends from its M = H·W queries to
M' = ⌊H/R⌋·⌊W/R⌋ keys.
"""
from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models import build_model_with_cfg, register_model
from timm.models.pvt_v2 import PyramidVisionTransformerV2

from models.backbones import AttentionRecorder
from models.weights import hub_weights, load_backbone_weights
from pipeline.config import timm_model
from pipeline.errors import UserError

#: the type of a config key naming a Mix Transformer (afa.backbone, sasformer.backbone): SegFormer's ``mit_b*``
#: (registered below) or timm's ``pvt_v2_b*`` (the stand-in's family)
MiTName = timm_model("pvt_v2", "mix_transformer", example="mit_b1")

#: SegFormer's MiT variants: depths and widths per stage (NVlabs/SegFormer ``mmseg/models/backbones/
#: mix_transformer.py:373-424``; the same values in rulixiang/afa ``wetr/mix_transformer.py:394-439``)
MIT_VARIANTS: dict[str, dict] = {
    "mit_b0": dict(depths=(2, 2, 2, 2), embed_dims=(32, 64, 160, 256)),
    "mit_b1": dict(depths=(2, 2, 2, 2), embed_dims=(64, 128, 320, 512)),
    "mit_b2": dict(depths=(3, 4, 6, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b3": dict(depths=(3, 4, 18, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b4": dict(depths=(3, 8, 27, 3), embed_dims=(64, 128, 320, 512)),
    "mit_b5": dict(depths=(3, 6, 40, 3), embed_dims=(64, 128, 320, 512)),
}
#: what every variant shares (same file, each ``mit_bX.__init__``): heads [1, 2, 5, 8], MLP ratios [4, 4, 4, 4]
#: (timm's ``pvt_v2_b0..b4`` use 8, 8, 4, 4), qkv bias, the blocks' and stages' LayerNorm ε 1e-6, spatial
#: reduction [8, 4, 2, 1], no dropout, stochastic depth 0.1 (linear over all blocks). The rest is timm's
#: ``PyramidVisionTransformerV2`` and equals SegFormer's: the 7×7 stride-4 first embedding and 3×3 stride-2 merges
#: (padding k//2, LayerNorm ε 1e-5 after each), Mix-FFN fc1 → 3×3 depthwise conv → GELU → fc2, attention with a
#: R×R stride-R conv and LayerNorm (ε 1e-5) on the keys when R > 1, a LayerNorm (ε 1e-6) closing each stage
#: (tests/test_backbones_official.py checks each against a forward written from the official equations).
MIT_COMMON: dict = dict(num_heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=True, sr_ratios=(8, 4, 2, 1),
                        proj_drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                        norm_layer=partial(LayerNorm, eps=1e-6))

#: no hub weights: SegFormer's released ``mit_b*.pth`` are passed as a local file (docs/weights.md)
default_cfgs = {name: dict(url="", num_classes=1000, input_size=(3, 224, 224), first_conv="patch_embed.proj",
                           classifier="head", license="other") for name in MIT_VARIANTS}


def _create_mit(variant: str, pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    """SegFormer's ``variant`` as a timm ``PyramidVisionTransformerV2`` (its state dict in timm's pvt_v2 names)."""
    if pretrained:
        raise UserError(f"{variant} has no weights on timm's hub: download SegFormer's {variant}.pth and pass it as "
                        "<section>.weights=FILE (docs/weights.md)")
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(PyramidVisionTransformerV2, variant, False,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
                                **{**MIT_COMMON, **MIT_VARIANTS[variant], **kwargs})


@register_model
def mit_b0(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b0", pretrained, **kwargs)


@register_model
def mit_b1(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b1", pretrained, **kwargs)


@register_model
def mit_b2(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b2", pretrained, **kwargs)


@register_model
def mit_b3(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b3", pretrained, **kwargs)


@register_model
def mit_b4(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b4", pretrained, **kwargs)


@register_model
def mit_b5(pretrained: bool = False, **kwargs) -> PyramidVisionTransformerV2:
    return _create_mit("mit_b5", pretrained, **kwargs)


class MixTransformer(nn.Module):
    """A timm PVT-v2 returning its four stage outputs (B×C_i×H_i×W_i) and recording the last stage's attention."""

    def __init__(self, name: str = "pvt_v2_b1", pretrained: bool = False, weights: str | None = None,
                 output_stride: int = 16, embed_dims: list[int] | None = None, depths: list[int] | None = None,
                 num_heads: list[int] | None = None, record_all: bool = False, attention: str = "softmax",
                 weights_ignore: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        kwargs = {k: tuple(v) for k, v in dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads).items() if v is not None}
        try:
            with hub_weights(name, pretrained, weights) as hub:  # a local file wins: no hub access then
                self.net = timm.create_model(name, pretrained=hub, num_classes=0, **kwargs)
        except (RuntimeError, TypeError) as e:
            raise UserError(f"Mix Transformer {name!r} could not be created ({str(e).splitlines()[0]}): use mit_b* or a timm pvt_v2_b* name") from None
        if not hasattr(self.net, "stages"):
            raise UserError(f"backbone {name!r} is not a Mix Transformer (mit_b*, timm pvt_v2_b*): set the section's backbone to e.g. mit_b1")
        if weights:
            load_backbone_weights(self.net, weights, weights_ignore, name)
        if output_stride not in (8, 16, 32):
            raise UserError(f"output_stride={output_stride}: use 32 (SegFormer's), 16 (AFA's, SASFormer's) or 8")
        for stage in self.net.stages[len(self.net.stages) - {32: 0, 16: 1, 8: 2}[output_stride]:]:
            stage.downsample.proj.stride = (1, 1)  # patch merging without downsampling (3×3 kernel, padding 1)
        last = self.net.stages[-1]
        self.channels: list[int] = [s.norm.normalized_shape[0] for s in self.net.stages]
        #: per stage, the attention of its blocks (only the last stage's unless ``record_all``)
        self.stage_attention: list[AttentionRecorder] = [AttentionRecorder(s.blocks) for s in self.net.stages[:-1]] if record_all else []
        # the last stage's maps: softmax probabilities, or AFA's raw q·kᵀ logits (``attention="logits"``)
        self.attention = AttentionRecorder(last.blocks, attention)
        self.stage_attention.append(self.attention)
        #: per stage, its spatial reduction ratio R (keys on a grid R times coarser than the queries)
        self.reduction: list[int] = [s.blocks[0].attn.sr.stride[0] if s.blocks[0].attn.sr is not None else 1 for s in self.net.stages]
        self.attention_maps = len(last.blocks) * last.blocks[0].attn.num_heads

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.net.patch_embed(x)
        feats = []
        for stage in self.net.stages:
            x = stage(x)
            feats.append(x)
        return feats
