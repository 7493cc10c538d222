"""Stage ``train_segmentation``: a segmentation network on stored labels (255 ignored) or on ground truth.

With its ``labels`` input wired (a label store: pseudo labels), it trains on every image of that
store; without it, on the ground-truth masks of ``data.train_split`` (the supervised upper bound).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.segmentation import partial_cross_entropy, segmentation_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.config import TrainConfig
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import run_training


@dataclass
class SegmentationSamples:
    root: Path
    ids: list[str]
    labels: Path | None  # a LabelStore, or None for the ground-truth masks
    cfg: TrainConfig

    def __call__(self, i: int, rng: np.random.Generator):
        ds = VOCFolder(self.root)
        image_id = self.ids[i]
        label = LabelStore(self.labels).read(image_id) if self.labels else ds.mask(image_id)
        img, lab = train_transform(ds.image(image_id), label, self.cfg.crop_size, self.cfg.scale_range,
                                   self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
        return img, lab


def segmentation_loss(model: torch.nn.Module, batch, step: int = 0) -> dict:
    """Pixel-wise cross-entropy, ignoring 255 (``partial_cross_entropy``)."""
    images, labels = batch
    return {"loss": partial_cross_entropy(model(images), labels)}


def run(ctx) -> dict:
    cfg = ctx.config
    if ctx.has_input("labels"):
        store = LabelStore(ctx.input("labels"))
        ids, labels, source = store.ids(), store.path, ctx.input_stage("labels")
    else:
        ds = ctx.dataset(cfg.data.train_split)
        ids, labels, source = [i for i in ds.ids if ds.has_mask(i)], None, "ground_truth"
    tcfg = cfg.segmentation.train
    metrics = run_training(ctx, segmentation_spec(cfg.segmentation, VOCFolder(ctx.run.voc_root).num_classes),
                           SegmentationSamples(ctx.run.voc_root, ids, labels, tcfg),
                           len(ids), lambda model: segmentation_loss, tcfg)
    return {**metrics, "labels": source}


#: what a segmentation network's training reads (its architecture, schedule and data)
SEGMENTATION_READS = ("amp", "segmentation.backbone", "segmentation.channels", "segmentation.pretrained", "segmentation.weights", "segmentation.weights_ignore",
                      "segmentation.head", "segmentation.output_stride", "segmentation.train", "seed", "data.train_split",
                      "data.max_images")

TRAIN_SEGMENTATION = Stage(
    "train_segmentation", run, reads=SEGMENTATION_READS,
    writes=(MODEL_FILE,), optional=("labels",), masks="ground_truth",  # unwired: the supervised baseline
    description="segmentation network on stored labels (or, unwired, on ground-truth masks)")
