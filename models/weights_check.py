"""``python cli.py check-weights FILE --flow NAME``: what a weights file gives each backbone of a flow.

Each backbone section the flow's stages read (``models.weights.backbone_sections``) is built as its method builds it
(``MixTransformer``, ``create_vit``, ``create_swin``, ``create_feature_backbone``, chosen by the timm family of its
``backbone``) with ``weights=FILE``, while ``recording_matches`` collects what the strict loader would load: the
layout detected, matched / missing / unexpected / mis-shaped tensors, what the layout and ``weights_ignore`` drop.
Nothing is loaded or written, and no hub is asked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from models.weights import WeightsMatch, recording_matches


def _family(name: str) -> str:
    import timm
    return timm.models.model_entrypoint(name.split(".")[0]).__module__.rsplit(".", 1)[-1]


def build_section_backbone(section: Any, weights: str, img_size: int = 384) -> nn.Module:
    """The backbone of a config section (its ``backbone`` and architecture keys) with ``weights``, as its method builds it."""
    from models.backbones import create_feature_backbone, create_vit
    from models.mix_transformer import MixTransformer
    from models.swtformer import create_swin
    ignore = tuple(getattr(section, "weights_ignore", ()) or ())
    family = _family(section.backbone)
    if family in ("pvt_v2", "mix_transformer"):
        return MixTransformer(section.backbone, False, weights, getattr(section, "output_stride", 16),
                              section.embed_dims, section.depths, section.num_heads, weights_ignore=ignore)
    if family in ("vision_transformer", "vision_transformer_hybrid"):
        args = {**section.vit(), "pretrained": False, "weights": weights} if hasattr(section, "vit") else dict(
            name=section.backbone, weights=weights)
        args.setdefault("weights_ignore", ignore)
        return create_vit(img_size=img_size, **args)
    if family == "swin_transformer":
        args = {**section.swin(), "pretrained": False, "weights": weights} if hasattr(section, "swin") else dict(
            name=section.backbone, weights=weights)
        args.setdefault("weights_ignore", ignore)
        return create_swin(**args)
    return create_feature_backbone(section.backbone, getattr(section, "output_stride", 8), False, weights,
                                   getattr(section, "channels", None), weights_ignore=ignore)


def check_weights(file: str | Path, sections: dict[str, Any], img_size: int = 384) -> dict[str, WeightsMatch]:
    """Per backbone section: what ``file`` gives its backbone (``WeightsMatch``), nothing loaded."""
    out = {}
    for name, section in sections.items():
        with recording_matches() as found:
            build_section_backbone(section, str(file), img_size)
        out[name] = found[-1]
    return out
