"""Stage ``train_segmentation``: a segmentation network on stored labels (255 ignored) or on ground truth."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from pipeline.store import LabelStore
from pipeline.training import StepIndexedDataset, train
from pipeline.transforms import train_transform
from pipeline.voc import IGNORE_INDEX, VOCFolder
from stages.common import segmentation_from_config

#: the stage whose LabelStore a flow's segmentation trains on (absent: ground-truth masks)
LABEL_SOURCES = {"make_pseudo_labels": "pseudo_labels.zarr"}


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
                                   self.cfg.hflip, self.cfg.color_jitter, rng)
        return img, lab


def segmentation_loss(model: torch.nn.Module, batch, step: int = 0) -> dict:
    """Pixel-wise cross-entropy, ignoring 255."""
    images, labels = batch
    return {"loss": F.cross_entropy(model(images), labels, ignore_index=IGNORE_INDEX)}


def run(ctx) -> dict:
    cfg = ctx.config
    source = next((s for s in ctx.stage.inputs if s in LABEL_SOURCES), None)
    if source:
        store = LabelStore(ctx.input_dir(source) / LABEL_SOURCES[source])
        ids, labels = store.ids(), store.path
    else:
        ds = ctx.run.dataset(cfg.data.train_split)
        ids, labels = [i for i in ds.ids if ds.has_mask(i)], None
    torch.manual_seed(cfg.seed)
    model = segmentation_from_config(cfg)
    tcfg = cfg.segmentation.train
    samples = StepIndexedDataset(len(ids), SegmentationSamples(ctx.run.voc_root, ids, labels, tcfg), cfg.seed)
    last = train(model, samples, segmentation_loss, tcfg, ctx.dir, {"key": ctx.key, "stage": "train_segmentation"},
                 desc="train_segmentation")
    return {"steps": tcfg.steps, "images": len(ids), "labels": source or "ground_truth",
            **{f"final_{k}": round(v, 5) for k, v in last.items()}}
