"""Stage ``train_classifier``: a multi-label ViT classifier on image-level labels.

``model.arch = vit_cam``: patch-token class maps, pooled (the CAM baseline), multi-label soft margin.
``model.arch = vit_acr``: class-token classifier trained with ACR's attention consistency between
each batch and a random view of it (``models.acr.acr_losses``; knobs in section ``acr``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.acr import acr_losses, consistency_weight, view_seed
from models.token_views import sample_view
from pipeline.config import ACRConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.training import StepIndexedDataset, train
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import check_layers, classifier_from_config, labelled_images


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
        # the last entry seeds the batch's random view (ACR); the same step always gets the same view
        return img, torch.from_numpy(self.labels[i]), int(rng.integers(1 << 62))


def classification_loss(model: torch.nn.Module, batch, step: int = 0) -> dict:
    """Multi-label soft-margin loss on the pooled class scores."""
    images, labels, _ = batch
    return {"loss": F.multilabel_soft_margin_loss(model(images), labels)}


@dataclass
class ACRLoss:
    """``models.acr.acr_losses`` with a view drawn from the batch's own seed."""

    cfg: ACRConfig
    crop_size: int

    def __call__(self, model: torch.nn.Module, batch, step: int = 0) -> dict:
        images, labels, seeds = batch
        c = self.cfg
        view = sample_view(view_seed(seeds), c.transforms, c.resize_range, self.crop_size, model.patch_size)
        on = consistency_weight(step, c.start_step, c.ramp_steps)
        return acr_losses(model, images, labels, view, c.alpha * on, c.beta * on, c.layers)


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.train_split)
    ids, labels = labelled_images(ds)
    torch.manual_seed(cfg.seed)
    model = classifier_from_config(cfg)
    samples = StepIndexedDataset(len(ids), ClassificationSamples(ds.root, ids, labels, cfg.train_classifier), cfg.seed)
    loss_fn = classification_loss
    if cfg.model.arch == "vit_acr":
        crop = cfg.train_classifier.crop_size
        if crop % model.patch_size:
            raise UserError(f"train_classifier.crop_size={crop} is not a multiple of the patch size {model.patch_size}: "
                            "ACR's flips and rotations permute whole patches only")
        check_layers(cfg.acr.layers, model.num_layers, "acr.layers")
        loss_fn = ACRLoss(cfg.acr, crop)
    last = train(model, samples, loss_fn, cfg.train_classifier, ctx.dir, {"key": ctx.key, "stage": "train_classifier"},
                 desc="train_classifier")
    return {"steps": cfg.train_classifier.steps, "images": len(ids), **{f"final_{k}": round(v, 5) for k, v in last.items()}}
