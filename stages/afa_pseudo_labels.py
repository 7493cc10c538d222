"""Stage ``make_pseudo_labels`` of the AFA flows: the stored CAM seeds propagated over the trained
network's affinity, then PAR (and optionally CRF), written to ``pseudo_labels.zarr``.

Per image, as in AFA's training labels but offline and on the whole image: the seeds (multi-scale
CAMs of ``make_seeds``) are resized to the affinity's grid, background-softmaxed with the background
score t (``pseudo.bkg_threshold``: with ``auto`` the seeds' threshold from ``eval_seeds`` — AFA's background
softmax keeps the argmax of [t, CAMs] —, or both ends of ``pseudo.bkg_band``), propagated by the random
walk over σ(A) within ``afa.radius`` (T = A^β / (column sums + ``afa.walk_eps``)), resized back and refined by ``pseudo.refine``
(``stages.afa_labels.label_scores``, ``stages.make_pseudo_labels.pseudo_label``).
``afa.propagate=false`` skips the propagation (as does a network trained with ``afa.affinity=false``,
Table 2 without AFA), ``pseudo.refine=[]`` skips PAR. The guard (``pseudo.guard``,
``stages.make_pseudo_labels.guarded_route``) compares this route with the same labels unrefined and with the
seeds without the propagation, refined and not, and labels by the best on the scored masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.afa import AFAConfig
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.afa_labels import PresentClasses, label_scores
from stages.common import trained_model
from stages.make_pseudo_labels import (PSEUDO_LABELS, PSEUDO_READS, background_threshold, guarded_route, guards, maps_name,
                                       pseudo_label, route_variants, uses_threshold, write_route)


def propagated_scores(cams: np.ndarray, affinity: torch.Tensor | None, grid: tuple[int, int], bkg: float,
                      cfg: AFAConfig) -> np.ndarray:
    """(K+1)×H×W scores of one image's normalised CAMs (K×H×W) for background score ``bkg``,
    propagated over ``affinity`` (N×N on ``grid``; None: not propagated)."""
    k, h, w = cams.shape
    x = torch.from_numpy(cams.astype(np.float32))[None]
    device = affinity.device if affinity is not None else "cpu"  # propagation runs where the affinity is
    if affinity is not None:
        x = F.interpolate(x.to(device), size=grid, mode="bilinear", align_corners=False)
        affinity = affinity[None]
    return label_scores(x, PresentClasses.all_of(k, device), bkg, (h, w), affinity, cfg.radius, cfg.beta,
                        cfg.log_t, cfg.walk_eps)[0].cpu().numpy()


def propagates(cfg: AFAConfig) -> bool:
    return cfg.affinity and cfg.propagate


@dataclass
class AFALabeler:
    """The pseudo label of one image: its seeds at background score ``threshold``, propagated over the network's
    affinity if ``propagate``, refined by ``refine``."""
    config: ConfigView
    threshold: float | None
    model: Path
    root: Path
    seeds: Path
    propagate: bool
    refine: list[str]

    def __call__(self, image_id: str) -> np.ndarray:
        seeds = LabelStore(self.seeds)
        cams, classes = seeds.read(image_id), seeds.read_attrs(image_id)["classes"]
        image = VOCFolder(self.root).image(image_id)
        affinity, grid = None, (0, 0)
        if self.propagate and classes:
            rt = Runtime.from_config(self.config)
            with torch.no_grad(), rt.autocast():
                aff, grid = trained_model(self.model, rt).affinity(rt.to(normalise(image))[None])
            affinity = aff[0].float()
        return pseudo_label(self.config, self.threshold, image, cams, classes, refine=self.refine,
                            scores_at=lambda bkg: propagated_scores(cams, affinity, grid, bkg, self.config.afa))


def run(ctx) -> dict:
    cfg = ctx.config
    threshold = background_threshold(ctx)
    seeds = LabelStore(ctx.input("seeds"))

    def routes_of(propagate: bool):
        maps = maps_name(ctx, "seeds")
        return route_variants(f"propagated {maps}" if propagate else maps, threshold, list(cfg.pseudo.refine),
                              lambda r: AFALabeler(cfg, threshold[0], ctx.input("model"), ctx.run.voc_root, seeds.path,
                                                   propagate, r), {"propagated": propagate})

    routes = routes_of(propagates(cfg.afa))
    if not guards(cfg.pseudo):  # the guard: only with a calibration split (pseudo.calibrate)
        routes = routes[:1]
    elif propagates(cfg.afa):
        routes += routes_of(False)
    route, guard = guarded_route(ctx, routes, seeds)
    return write_route(ctx, route, guard, seeds.ids())


MAKE_AFA_PSEUDO_LABELS = Stage("make_pseudo_labels", run,
                               reads=(*PSEUDO_READS, "amp", "afa.affinity", "afa.propagate", "afa.radius", "afa.beta", "afa.log_t",
                                      "afa.walk_eps"),
                               writes=(PSEUDO_LABELS,), inputs=("seeds", "model"), optional=("threshold",),
                               uses=lambda config: ("seeds", "model", *uses_threshold(config)), version=2,  # 2: the guard
                               description="seeds propagated over the learned affinity, PAR (CRF) (the best route on the masks) → pseudo_labels.zarr")
