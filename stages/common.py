"""Helpers the stage modules share: model loading from a stage's outputs, image tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models import create_model
from pipeline.checkpoint import load_weights
from pipeline.config import RunConfig


def classifier_from_config(cfg: RunConfig) -> torch.nn.Module:
    m = cfg.model
    backbone = dict(name=m.backbone, pretrained=m.pretrained, weights=m.weights, patch_size=m.patch_size,
                    embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads)
    return create_model("vit_cam_classifier", backbone=backbone, img_size=cfg.train_classifier.crop_size,
                        num_classes=20, pooling=m.pooling, topk=m.topk)


def classifier_for_inference(cfg: RunConfig) -> torch.nn.Module:
    """The classifier's architecture only: its trained weights are loaded next, nothing is fetched."""
    return classifier_from_config(cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False, "weights": None})}))


def segmentation_from_config(cfg: RunConfig, for_inference: bool = False) -> torch.nn.Module:
    s = cfg.segmentation
    # trained weights replace the initial ones at inference: do not fetch or read them again
    return create_model("segmentation_net", backbone=s.backbone, head=s.head, num_classes=21, output_stride=s.output_stride,
                        pretrained=s.pretrained and not for_inference, weights=None if for_inference else s.weights)


def load_trained(model: torch.nn.Module, stage_dir: Path) -> torch.nn.Module:
    state, _ = load_weights(stage_dir / "model.safetensors")
    model.load_state_dict(state)
    return model.eval()


def labels_to_onehot_classes(label_vec: np.ndarray) -> list[int]:
    """Multi-hot over the 20 foreground classes → VOC class indices (1..20)."""
    return [int(c) + 1 for c in np.nonzero(label_vec)[0]]
