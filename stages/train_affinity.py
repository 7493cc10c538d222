"""Stage ``train_affinity``: an AffinityNet (PSA manner) trained on confident labels from the seeds.

1. Confident labels per image (``affinity_labels.zarr``): the seeds — by default ACR* (without
   affinity refinement, to avoid over-activation) — labelled at two background scores
   ``affinity.label_band = (low, high)`` after ``affinity.label_refine``; where the two labels agree
   the pixel is confident (foreground above ``high``, background below ``low``), elsewhere 255.
2. AffinityNet on those labels: pairs within ``affinity.radius`` at stride 8, PSA's balanced loss.

With ``affinity.source = attention`` nothing is trained: the random walk uses the ViT's own
patch-to-patch attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from models.affinity_net import affinity_loss, labels_at_stride, pair_offsets, pairwise_affinity
from pipeline.config import PseudoConfig, RunConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.store import LabelStore
from pipeline.training import StepIndexedDataset, train
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import affinity_from_config, fill_store
from stages.evaluate import evaluate_labels
from stages.make_pseudo_labels import make_pseudo_label

LABEL_STORES = {"unrefined": "seeds_unrefined.zarr", "refined": "seeds.zarr"}


@dataclass
class ConfidentLabelWorker:
    root: Path
    seeds: Path
    out: Path
    config: dict  # the run config

    @cached_property
    def pseudo(self) -> PseudoConfig:
        cfg = RunConfig.model_validate(self.config)
        a = cfg.affinity
        return cfg.pseudo.model_copy(update={"ignore_band": a.label_band, "refine": a.label_refine})

    def __call__(self, image_id: str) -> None:
        seeds = LabelStore(self.seeds)
        image = VOCFolder(self.root).image(image_id)
        label = make_pseudo_label(image, seeds.read(image_id), seeds.read_attrs(image_id)["classes"], self.pseudo)
        LabelStore(self.out).write(image_id, label)


@dataclass
class AffinitySamples:
    root: Path
    ids: list[str]
    labels: Path
    cfg: TrainConfig

    def __call__(self, i: int, rng: np.random.Generator):
        image_id = self.ids[i]
        img, lab = train_transform(VOCFolder(self.root).image(image_id), LabelStore(self.labels).read(image_id),
                                   self.cfg.crop_size, self.cfg.scale_range, self.cfg.hflip, self.cfg.color_jitter, rng)
        return img, lab


@dataclass
class AffinityLoss:
    radius: int

    def __call__(self, model, batch, step: int = 0) -> dict:
        images, labels = batch
        feats = model(images)
        offsets = pair_offsets(self.radius)
        small = labels_at_stride(labels, model.stride, tuple(feats.shape[-2:]))
        return affinity_loss(pairwise_affinity(feats, offsets), small, offsets)


def run(ctx) -> dict:
    cfg = ctx.config
    a = cfg.affinity
    if a.source == "attention":
        return {"source": "attention", "trained": 0}
    low, high = a.label_band
    if not 0 <= low <= high:
        raise UserError(f"affinity.label_band={list(a.label_band)} must be (low, high) with 0 <= low <= high")
    seeds = LabelStore(ctx.input_dir("make_seeds") / LABEL_STORES[a.label_seeds])
    ds = ctx.run.dataset(cfg.data.label_split)
    labels, _ = fill_store(ctx, "affinity_labels.zarr", {"stage": "train_affinity", "kind": "labels"}, seeds.ids(),
                           lambda out: ConfidentLabelWorker(ds.root, seeds.path, out, cfg.model_dump(mode="json")),
                           cfg.pseudo.workers, "affinity_labels")
    quality = evaluate_labels(ds, labels, cfg.pseudo.workers, "affinity_labels")
    ids = labels.ids()
    torch.manual_seed(cfg.seed)
    model = affinity_from_config(cfg)
    samples = StepIndexedDataset(len(ids), AffinitySamples(ds.root, ids, labels.path, a.train), cfg.seed)
    last = train(model, samples, AffinityLoss(a.radius), a.train, ctx.dir, {"key": ctx.key, "stage": "train_affinity"},
                 desc="train_affinity")
    return {"source": "network", "steps": a.train.steps, "images": len(ids),
            "label_miou": quality["miou"], "label_coverage": quality["coverage"],
            **{f"final_{k}": round(v, 5) for k, v in last.items()}}
