"""Stage ``train_classifier``: a multi-label ViT classifier on image-level labels (CAM baseline)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from pipeline.training import StepIndexedDataset, train
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import classifier_from_config


@dataclass
class ClassificationSamples:
    """Image ``i`` of a split, augmented, with its 20-way multi-hot label."""

    root: Path
    ids: list[str]
    labels: np.ndarray
    cfg: TrainConfig

    def __call__(self, i: int, rng: np.random.Generator):
        ds = VOCFolder(self.root)
        img, _ = train_transform(ds.image(self.ids[i]), None, self.cfg.crop_size, self.cfg.scale_range,
                                 self.cfg.hflip, self.cfg.color_jitter, rng)
        return img, torch.from_numpy(self.labels[i])


def classification_loss(model: torch.nn.Module, batch) -> dict:
    """Multi-label soft-margin loss on the pooled class scores."""
    images, labels = batch
    return {"loss": F.multilabel_soft_margin_loss(model(images), labels)}


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.train_split)
    labels = ds.label_matrix
    keep = labels.sum(1) > 0
    ids = [i for i, k in zip(ds.ids, keep) if k]
    torch.manual_seed(cfg.seed)
    model = classifier_from_config(cfg)
    samples = StepIndexedDataset(len(ids), ClassificationSamples(ds.root, ids, labels[keep], cfg.train_classifier), cfg.seed)
    last = train(model, samples, classification_loss, cfg.train_classifier, ctx.dir, {"key": ctx.key, "stage": "train_classifier"},
                 desc="train_classifier")
    return {"steps": cfg.train_classifier.steps, "images": len(ids), **{f"final_{k}": round(v, 5) for k, v in last.items()}}
