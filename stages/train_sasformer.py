"""Stage ``train_sasformer``: SASFormer's single-stage training (``models/sasformer.py``) of SegFormer on sparse
labels: partial cross-entropy on the labelled pixels plus α times the hierarchical attention affinity loss over
the encoder's four blocks. α is ``sasformer.alpha``, or the paper's for ``data.sparse.kind`` (1.2 scribbles, 0.2
points); α = 0 trains the SegFormer baseline on the same network, data and schedule. The crop's padding is labelled
``CROP_PADDING`` in the batches (the reference code's −2), apart from the unlabelled pixels (255)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.sasformer import CROP_PADDING, SASFormerLoss, resolve_alpha, sasformer_spec
from pipeline.checkpoint import MODEL_FILE
from pipeline.stage import Stage
from pipeline.store import LabelStore
from pipeline.transforms import train_transform
from pipeline.voc import IGNORE_INDEX, VOCFolder
from stages.common import run_training
from stages.train_segmentation import SegmentationSamples

#: the unlabelled pixels' value while the crop pads with IGNORE_INDEX (no VOC class and not 255)
_UNLABELLED_IN_TRANSIT = 254


def mark_padding(label: np.ndarray, transform) -> tuple:
    """Run ``transform(label')`` (which pads its crop with 255) on the label with its unlabelled pixels moved to 254,
    then give them 255 back and the padding ``CROP_PADDING``: the crop's padding told apart from the unlabelled.

    >>> pad = lambda lab: np.pad(lab, ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)
    >>> mark_padding(np.array([[3, 255]], np.uint8), pad).tolist()
    [[3, 255, -2]]
    """
    if (label == _UNLABELLED_IN_TRANSIT).any():
        raise ValueError(f"label value {_UNLABELLED_IN_TRANSIT} is reserved while cropping")
    out = np.asarray(transform(np.where(label == IGNORE_INDEX, _UNLABELLED_IN_TRANSIT, label).astype(np.uint8))).astype(np.int64)
    padding = out == IGNORE_INDEX
    out[out == _UNLABELLED_IN_TRANSIT] = IGNORE_INDEX
    out[padding] = CROP_PADDING
    return out


@dataclass
class SparseCropSamples(SegmentationSamples):
    """``SegmentationSamples`` whose labels mark the crop's padding ``CROP_PADDING`` (int64 labels)."""

    def __call__(self, i: int, rng: np.random.Generator):
        label = LabelStore(self.labels).read(self.ids[i])
        result = {}

        def transform(lab: np.ndarray) -> np.ndarray:
            img, out = train_transform(VOCFolder(self.root).image(self.ids[i]), lab, self.cfg.crop_size, self.cfg.scale_range,
                                       self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
            result["image"] = img
            return out.numpy()

        lab = torch.from_numpy(mark_padding(label, transform))
        return result["image"], lab


def run(ctx) -> dict:
    cfg = ctx.config
    s = cfg.sasformer
    store = LabelStore(ctx.input("labels"))
    ids = store.ids()
    alpha = resolve_alpha(s.alpha, cfg.data.sparse.kind)
    loss = SASFormerLoss(alpha, tuple(s.blocks), s.distance, s.block_reduction, s.partial_ce_at)
    metrics = run_training(ctx, sasformer_spec(s, VOCFolder(ctx.run.voc_root).num_classes), SparseCropSamples(ctx.run.voc_root, ids, store.path, s.train),
                           len(ids), lambda model: loss, s.train)
    return {**metrics, "labels": ctx.input_stage("labels"), "alpha": alpha, "blocks": list(s.blocks), "distance": s.distance}


TRAIN_SASFORMER = Stage("train_sasformer", run,
                        reads=("amp", "sasformer", "seed", "data.train_split", "data.max_images", "data.sparse.kind"),
                        writes=(MODEL_FILE,), inputs=("labels",),
                        description="SASFormer: SegFormer on sparse labels + the hierarchical attention affinity loss")
