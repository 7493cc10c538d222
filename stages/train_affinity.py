"""Stage ``train_affinity``: an AffinityNet (PSA manner) trained on confident labels from the seeds.

1. Confident labels per image (``affinity_labels.zarr``): the seeds — by default ACR* (without
   affinity refinement, to avoid over-activation; ``affinity.label_seeds``) — labelled at the two
   background scores of ``affinity.bkg_band`` after ``affinity.label_refine``, combined by
   ``stages.labels.reliable_labels`` (foreground above ``high``, background below ``low``, 255 between).
2. AffinityNet on those labels: pairs within ``affinity.radius`` at stride 8, PSA's balanced loss.

With ``affinity.source = attention`` nothing is trained: the random walk uses the ViT's own
patch-to-patch attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.affinity_net import affinity_loss, affinity_spec, labels_at_stride, pairwise_affinity
from models.pairs import pair_offsets
from pipeline.checkpoint import MODEL_FILE
from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.runtime import resolve_device
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import train_transform
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, run_training
from stages.evaluate import evaluate_labels
from stages.make_pseudo_labels import make_pseudo_label

AFFINITY_LABELS = "affinity_labels.zarr"


@dataclass
class ConfidentLabelWorker:
    config: ConfigView
    root: Path
    seeds: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        a, p = self.config.affinity, self.config.pseudo
        seeds = LabelStore(self.seeds)
        image = VOCFolder(self.root).image(image_id)
        label = make_pseudo_label(image, seeds.read(image_id), seeds.read_attrs(image_id)["classes"], a.bkg_band[1],
                                  a.bkg_band, a.label_refine, p.par, p.crf, device=str(resolve_device(self.config.device)))
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
                                   self.cfg.crop_size, self.cfg.scale_range, self.cfg.hflip, self.cfg.color_jitter, rng, self.cfg.brightness_shift)
        return img, lab


@dataclass
class AffinityLoss:
    radius: int

    def __call__(self, model, batch, step: int = 0) -> dict:
        images, labels = batch
        feats = model(images)
        offsets = pair_offsets(self.radius, "euclidean")
        small = labels_at_stride(labels, model.stride, tuple(feats.shape[-2:]))
        return affinity_loss(pairwise_affinity(feats, offsets), small, offsets)


def label_seeds(ctx) -> LabelStore:
    """The seeds the confident labels come from (``affinity.label_seeds``: the ``unrefined_seeds`` input or ``seeds``)."""
    if ctx.config.affinity.label_seeds == "refined":
        return LabelStore(ctx.input("seeds"))
    path = ctx.input("unrefined_seeds") if ctx.has_input("unrefined_seeds") else None
    if path is None or not (path / "zarr.json").is_file() or not len(LabelStore(path)):
        raise UserError("affinity.label_seeds=unrefined: this flow's seed stage stored no seeds before affinity refinement "
                        "(with its current settings): set affinity.label_seeds=refined")
    return LabelStore(path)


def run(ctx) -> dict:
    cfg = ctx.config
    a = cfg.affinity
    if a.source == "attention":
        return {"source": "attention", "trained": 0}
    seeds = label_seeds(ctx)
    ds = ctx.dataset(cfg.data.label_split)
    labels, _ = fill_store(ctx, AFFINITY_LABELS, {"kind": "labels"}, seeds.ids(),
                           lambda out: ConfidentLabelWorker(cfg, ds.root, seeds.path, out), image_pool(ctx))
    with ctx.scoring():  # a report: the labels' mIoU on the masks, not used by the training
        quality = evaluate_labels(ds, labels, image_pool(ctx), "affinity_labels")
    ids = labels.ids()
    metrics = run_training(ctx, affinity_spec(a), AffinitySamples(ds.root, ids, labels.path, a.train), len(ids),
                           lambda model: AffinityLoss(a.radius), a.train)
    return {"source": "network", **metrics, "label_miou": quality["miou"], "label_coverage": quality["coverage"]}


TRAIN_AFFINITY = Stage(
    "train_affinity", run,
    reads=("amp", "affinity.source", "affinity.backbone", "affinity.channels", "affinity.pretrained", "affinity.weights", "affinity.weights_ignore", "affinity.dims",
           "affinity.radius", "affinity.label_seeds", "affinity.bkg_band", "affinity.label_refine", "affinity.train",
           "pseudo.par", "pseudo.crf", "seed", "data.label_split", "data.max_images"),
    writes=(AFFINITY_LABELS, MODEL_FILE), inputs=("seeds",), optional=("unrefined_seeds",),
    description="AffinityNet (PSA) on confident labels from the (unrefined) seeds")
