"""The Mix Transformer (MiT) of SegFormer as AFA uses it, on timm's ``pvt_v2_b*`` (the same family:
overlapping patch embedding, spatial-reduction attention, Mix-FFN).

AFA keeps the last stage at 1/16: its patch merging runs at stride 1 (``output_stride=16``). For
small images ``output_stride=8`` also runs the third stage's merging at stride 1. The last stage's
spatial reduction ratio is 1, so its blocks' softmax attention is the full N×N matrix; those maps
are recorded (in the graph) for AFA's affinity. ``record_all`` records every stage's blocks (SASFormer's
affinity loss reads all four): a stage with spatial reduction ratio R attends from its M = H·W queries to
M' = ⌊H/R⌋·⌊W/R⌋ keys.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from models.backbones import AttentionRecorder, load_local_weights
from pipeline.config import timm_model
from pipeline.errors import UserError

#: the type of a config key naming a Mix Transformer (afa.backbone, sasformer.backbone)
MiTName = timm_model("pvt_v2", example="pvt_v2_b1")


class MixTransformer(nn.Module):
    """A timm PVT-v2 returning its four stage outputs (B×C_i×H_i×W_i) and recording the last stage's attention."""

    def __init__(self, name: str = "pvt_v2_b1", pretrained: bool = False, weights: str | None = None,
                 output_stride: int = 16, embed_dims: list[int] | None = None, depths: list[int] | None = None,
                 num_heads: list[int] | None = None, record_all: bool = False, attention: str = "softmax") -> None:
        super().__init__()
        kwargs = {k: tuple(v) for k, v in dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads).items() if v is not None}
        try:
            self.net = timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
        except (RuntimeError, TypeError) as e:
            raise UserError(f"Mix Transformer {name!r} could not be created ({str(e).splitlines()[0]}): use a timm pvt_v2_b* name") from None
        if not hasattr(self.net, "stages"):
            raise UserError(f"backbone {name!r} is not a Mix Transformer (timm pvt_v2_b*): set the section's backbone to e.g. pvt_v2_b1")
        if weights:
            from timm.models.pvt_v2 import checkpoint_filter_fn
            load_local_weights(self.net, weights, checkpoint_filter_fn)
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
