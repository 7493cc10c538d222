"""timm's ViT files, as ACR's code loads them (``jx_vit_base_resnet50_384-9fd3c705.pth``) → a timm ViT.

ACR builds its ViT-hybrid with its vendored timm, ``create_model("vit_base_resnet50_384", pretrained=True)``
(OpenNLPLab/ACR_WSSS ``DPT/vit.py:556``), which reads ``jx_vit_base_resnet50_384-9fd3c705.pth``
(``models/vision_transformer_hybrid.py:44-46``): timm's own names (``cls_token``, ``pos_embed``,
``patch_embed.backbone.stem.conv`` / ``.stages.{s}.blocks.{b}.{conv,norm}{1,2,3}`` / ``.downsample.{conv,norm}``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``) and the ImageNet
classifier ``head.*``, which ACR leaves unused (its classifier is ``cls_head``) and which is dropped here by name.
As timm's ``vision_transformer.checkpoint_filter_fn`` does, a position embedding of another grid is resampled to the
backbone's (bicubic; ACR instead interpolates it bilinearly at each forward, ``models/vision_transformer.py:490-503``,
the same at its 384 crops).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from models.weights import Conversion, Layout, register_layout

VIT_CLASSIFIER = ("head.weight", "head.bias")


def convert_timm_vit(tensors: dict[str, torch.Tensor], backbone: Mapping[str, torch.Tensor]) -> Conversion:
    out, source, dropped, notes = {}, {}, {}, []
    for k, v in tensors.items():
        if k in VIT_CLASSIFIER and k not in backbone:
            dropped[k] = "the ImageNet classifier (ACR's code leaves it unused; the backbone here has none)"
            continue
        if k == "pos_embed" and k in backbone and v.shape != backbone[k].shape and v.shape[-1] == backbone[k].shape[-1]:
            from timm.layers import resample_abs_pos_embed
            prefix = 1
            old = int(round((v.shape[1] - prefix) ** 0.5))
            new = int(round((backbone[k].shape[1] - prefix) ** 0.5))
            if old * old + prefix == v.shape[1] and new * new + prefix == backbone[k].shape[1]:
                v = resample_abs_pos_embed(v, (new, new), (old, old), num_prefix_tokens=prefix)
                notes.append(f"pos_embed resampled from a {old}×{old} grid to {new}×{new} (bicubic)")
        out[k], source[k] = v, k
    return Conversion(out, source, dropped, tuple(notes))


TIMM_VIT = register_layout(Layout(
    "timm-vit", "vit", "timm's ViT names: the jx_vit_*.pth files of timm ≤ 0.4 that ACR's code loads, timm hub files",
    lambda keys: "cls_token" in keys and "blocks.0.attn.qkv.weight" in keys, convert_timm_vit))
