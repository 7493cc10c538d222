"""Stage ``train_classifier``: the CAM baseline's multi-label ViT classifier on image-level labels.

Patch-token class maps, pooled (``model.pooling``), multi-label soft-margin loss. ACR trains its
class-token classifier in ``stages/train_acr_classifier.py`` on the same samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.cam_classifier import cam_classifier_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.config import TrainConfig
from pipeline.stage import Stage
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import labelled_images, run_training

#: what every classifier-training stage reads
CLASSIFIER_READS = ("model", "train_classifier", "seed", "amp", "data.train_split", "data.max_images")


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
                                 self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift,
                                 self.cfg.resize_long)
        # the last entry seeds the batch's random view (ACR); the same step always gets the same view
        return img, torch.from_numpy(self.labels[i]), int(rng.integers(1 << 62))


def classification_loss(model: torch.nn.Module, batch, step: int = 0) -> dict:
    """Multi-label soft-margin loss on the pooled class scores."""
    images, labels, _ = batch
    return {"loss": F.multilabel_soft_margin_loss(model(images), labels)}


def classifier_samples(ctx) -> tuple[ClassificationSamples, int]:
    """The training split's labelled images as classification samples, and how many."""
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.train_split)
    ids, labels = labelled_images(ds)
    return ClassificationSamples(ds.root, ids, labels, cfg.train_classifier), len(ids)


def run(ctx) -> dict:
    cfg = ctx.config
    samples, n = classifier_samples(ctx)
    spec = cam_classifier_spec(cfg.model, cfg.train_classifier.crop_size, num_classes=samples.labels.shape[1])
    metrics = run_training(ctx, spec, samples, n, lambda model: classification_loss, cfg.train_classifier)
    # images without any image-level label (COCO's unannotated ones) are not trained on: counted here
    return {**metrics, "unlabelled_images": len(ctx.dataset(cfg.data.train_split)) - n}


TRAIN_CLASSIFIER = Stage("train_classifier", run, reads=CLASSIFIER_READS, writes=(MODEL_FILE,),
                         description="multi-label ViT classifier (patch-token CAM, pooled) on image-level labels")
