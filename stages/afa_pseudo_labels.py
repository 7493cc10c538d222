"""Stage ``make_pseudo_labels`` of the AFA flows: the stored CAM seeds propagated over the trained
network's affinity, then PAR (and optionally CRF), written to ``pseudo_labels.zarr``.

Per image, as in AFA's training labels but offline and on the whole image: the seeds (multi-scale
CAMs of ``make_seeds``) are resized to the affinity's grid, background-softmaxed with the background
score t (``pseudo.bkg_threshold``, or both ends of ``pseudo.ignore_band``), propagated by the random
walk over σ(A) within ``afa.radius`` (T = D⁻¹A^α), resized back and refined by ``pseudo.refine``.
``afa.propagate=false`` skips the propagation (as does a network trained with ``afa.affinity=false``,
Table 2 without AFA), ``pseudo.refine=[]`` skips PAR.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.afa import PresentClasses, label_scores
from pipeline.config import AFAConfig
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import RunConfigWorker, afa_from_config, fill_store, trained_model
from stages.make_pseudo_labels import make_pseudo_label


def propagated_scores(cams: np.ndarray, affinity: torch.Tensor | None, grid: tuple[int, int], bkg: float,
                      cfg: AFAConfig) -> np.ndarray:
    """(K+1)×H×W scores of one image's normalised CAMs (K×H×W) for background score ``bkg``,
    propagated over ``affinity`` (N×N on ``grid``; None: not propagated)."""
    k, h, w = cams.shape
    present = PresentClasses(torch.arange(k + 1)[None], torch.ones(1, k + 1, dtype=torch.bool))
    x = torch.from_numpy(cams.astype(np.float32))[None]
    if affinity is not None:
        x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        affinity = affinity[None]
    return label_scores(x, present, bkg, (h, w), affinity, cfg.radius, cfg.power, cfg.log_t)[0].numpy()


@dataclass
class AFAPseudoLabelWorker(RunConfigWorker):
    model_dir: Path
    root: Path
    seeds: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        cfg = self.cfg
        seeds = LabelStore(self.seeds)
        cams, classes = seeds.read(image_id), seeds.read_attrs(image_id)["classes"]
        image = VOCFolder(self.root).image(image_id)
        affinity, grid = None, (0, 0)
        if propagates(cfg.afa) and classes:
            model = trained_model(self.model_dir, lambda: afa_from_config(cfg, for_inference=True))
            with torch.no_grad():
                aff, grid = model.affinity(normalise(image)[None])
            affinity = aff[0]
        label = make_pseudo_label(image, cams, classes, cfg.pseudo,
                                  scores_at=lambda bkg: propagated_scores(cams, affinity, grid, bkg, cfg.afa))
        LabelStore(self.out).write(image_id, label)


def propagates(cfg: AFAConfig) -> bool:
    return cfg.affinity and cfg.propagate


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    seeds = LabelStore(ctx.input_dir("make_seeds") / "seeds.zarr")
    store, done = fill_store(ctx, "pseudo_labels.zarr", {"stage": "make_pseudo_labels", "kind": "labels",
                                                         "refine": list(cfg.pseudo.refine), "propagated": propagates(cfg.afa)},
                             seeds.ids(), lambda out: AFAPseudoLabelWorker(cfg.model_dump(mode="json"), ctx.input_dir("train_single_stage"),
                                                                           ds.root, seeds.path, out),
                             cfg.pseudo.workers, "make_pseudo_labels")
    return {"images": len(store), "resumed_from": done, "propagated": propagates(cfg.afa)}
