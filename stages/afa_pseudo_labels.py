"""Stage ``make_pseudo_labels`` of the AFA flows: the stored CAM seeds propagated over the trained
network's affinity, then PAR (and optionally CRF), written to ``pseudo_labels.zarr``.

Per image, as in AFA's training labels but offline and on the whole image: the seeds (multi-scale
CAMs of ``make_seeds``) are resized to the affinity's grid, background-softmaxed with the background
score t (``pseudo.bkg_threshold``: with ``auto`` the seeds' threshold from ``eval_seeds`` — AFA's background
softmax keeps the argmax of [t, CAMs] —, or both ends of ``pseudo.bkg_band``), propagated by the random
walk over σ(A) within ``afa.radius`` (T = D⁻¹A^β), resized back and refined by ``pseudo.refine``
(``stages.afa_labels.label_scores``, ``stages.make_pseudo_labels.pseudo_label``).
``afa.propagate=false`` skips the propagation (as does a network trained with ``afa.affinity=false``,
Table 2 without AFA), ``pseudo.refine=[]`` skips PAR.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.afa import AFAConfig
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.afa_labels import PresentClasses, label_scores
from stages.common import fill_store, trained_model
from stages.make_pseudo_labels import PSEUDO_LABELS, PSEUDO_READS, background_threshold, pseudo_label, uses_threshold


def propagated_scores(cams: np.ndarray, affinity: torch.Tensor | None, grid: tuple[int, int], bkg: float,
                      cfg: AFAConfig) -> np.ndarray:
    """(K+1)×H×W scores of one image's normalised CAMs (K×H×W) for background score ``bkg``,
    propagated over ``affinity`` (N×N on ``grid``; None: not propagated)."""
    k, h, w = cams.shape
    x = torch.from_numpy(cams.astype(np.float32))[None]
    if affinity is not None:
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        affinity = affinity[None]
    return label_scores(x, PresentClasses.all_of(k), bkg, (h, w), affinity, cfg.radius, cfg.beta, cfg.log_t)[0].numpy()


def propagates(cfg: AFAConfig) -> bool:
    return cfg.affinity and cfg.propagate


@dataclass
class AFAPseudoLabelWorker:
    config: ConfigView
    bkg_threshold: float | None
    model: Path
    root: Path
    seeds: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        afa = self.config.afa
        seeds = LabelStore(self.seeds)
        cams, classes = seeds.read(image_id), seeds.read_attrs(image_id)["classes"]
        image = VOCFolder(self.root).image(image_id)
        affinity, grid = None, (0, 0)
        if propagates(afa) and classes:
            with torch.no_grad():
                aff, grid = trained_model(self.model).affinity(normalise(image)[None])
            affinity = aff[0]
        label = pseudo_label(self.config, self.bkg_threshold, image, cams, classes,
                             scores_at=lambda bkg: propagated_scores(cams, affinity, grid, bkg, afa))
        LabelStore(self.out).write(image_id, label)


def run(ctx) -> dict:
    cfg = ctx.config
    t, source = background_threshold(ctx)
    seeds = LabelStore(ctx.input("seeds"))
    store, done = fill_store(ctx, PSEUDO_LABELS, {"kind": "labels", "refine": list(cfg.pseudo.refine),
                                                  "propagated": propagates(cfg.afa), "threshold": t},
                             seeds.ids(), lambda out: AFAPseudoLabelWorker(cfg, t, ctx.input("model"), ctx.run.voc_root,
                                                                           seeds.path, out),
                             cfg.pseudo.workers)
    return {"images": len(store), "resumed_from": done, "propagated": propagates(cfg.afa), "threshold": t,
            "threshold_from": source}


MAKE_AFA_PSEUDO_LABELS = Stage("make_pseudo_labels", run,
                               reads=(*PSEUDO_READS, "afa.affinity", "afa.propagate", "afa.radius", "afa.beta", "afa.log_t"),
                               writes=(PSEUDO_LABELS,), inputs=("seeds", "model"), optional=("threshold",),
                               uses=lambda config: ("seeds", "model", *uses_threshold(config)),
                               description="seeds propagated over the learned affinity, PAR (CRF) → pseudo_labels.zarr")
