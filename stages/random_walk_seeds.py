"""Stage ``random_walk``: the seeds propagated over a semantic affinity (PSA/IRN random walk).

Per image: the affinity A over the feature grid — the trained AffinityNet's
exp(−mean|f_i − f_j|) within ``affinity.radius`` (``source = network``), or the classifier's
patch-to-patch attention mean_l A_l[1:,1:], symmetrised (``source = attention``). The seeds (K×H×W)
are resized to the grid, propagated with ``stages.random_walk.propagate`` (``affinity.beta``,
``affinity.log_t``), resized back and max-normalised per class, as IRN does before its background
threshold. The result goes to ``rw_seeds.zarr`` in the seeds' format, so ``make_pseudo_labels``
reads it like seeds; the stage also reports the threshold sweep of these maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.affinity_net import dense_affinity
from models.cam_classifier import normalise_cams
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import RunConfigWorker, affinity_from_config, check_layers, classifier_from_config, fill_store, trained_model
from stages.eval_seeds import score_ids
from stages.evaluate import evaluate_sweep
from stages.random_walk import propagate


def network_affinity(model, image: torch.Tensor, radius: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """AffinityNet affinity (N×N, zero beyond ``radius``) of one normalised 3×H×W image, and its grid."""
    feats = model(image[None])[0]
    return dense_affinity(feats, radius), tuple(feats.shape[-2:])


def attention_affinity(model, image: torch.Tensor, layers: list[int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """The classifier's patch-to-patch attention mean_l A_l[1:,1:], symmetrised: (Ā + Āᵀ)/2, and its grid."""
    model(image[None])
    p = model.prefix
    a = torch.stack([m[0, p:, p:] for m in model.attention.head_mean(layers)]).mean(0)
    return (a + a.T) / 2, model.grid(image[None])


def random_walk_maps(seeds: np.ndarray, affinity: torch.Tensor, grid: tuple[int, int], beta: float, log_t: int) -> np.ndarray:
    """Propagate K×H×W seeds over an N×N affinity of an h×w grid; K×H×W, max-normalised per class."""
    if seeds.shape[0] == 0:
        return seeds.astype(np.float32)
    h, w = seeds.shape[-2:]
    small = F.interpolate(torch.from_numpy(seeds.astype(np.float32))[None], size=grid, mode="bilinear", align_corners=False)[0]
    walked = propagate(small.reshape(small.shape[0], -1), affinity, beta=beta, log_t=log_t).reshape(-1, *grid)
    up = F.interpolate(walked[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return normalise_cams(up.clamp_min(0)).numpy()


@dataclass
class RandomWalkWorker(RunConfigWorker):
    root: Path
    seeds: Path
    affinity_dir: Path
    classifier_dir: Path
    out: Path

    @torch.no_grad()
    def __call__(self, image_id: str) -> None:
        cfg = self.cfg
        a = cfg.affinity
        image = normalise(VOCFolder(self.root).image(image_id))
        if a.source == "network":
            model = trained_model(self.affinity_dir, lambda: affinity_from_config(cfg, for_inference=True))
            aff, grid = network_affinity(model, image, a.radius)
        else:
            model = trained_model(self.classifier_dir, lambda: classifier_from_config(cfg, for_inference=True))
            aff, grid = attention_affinity(model, image, a.attention_layers)
        seeds = LabelStore(self.seeds)
        maps = random_walk_maps(seeds.read(image_id), aff, grid, a.beta, a.log_t)
        LabelStore(self.out).write(image_id, maps.astype(np.float16), {"classes": seeds.read_attrs(image_id)["classes"]})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    seeds = LabelStore(ctx.input_dir("make_seeds") / "seeds.zarr")
    if cfg.affinity.source == "attention":
        # the worker runs in this process and reuses the model loaded here
        model = trained_model(ctx.input_dir("train_classifier"), lambda: classifier_from_config(cfg, for_inference=True))
        check_layers(cfg.affinity.attention_layers, model.num_layers, "affinity.attention_layers")
    store, done = fill_store(ctx, "rw_seeds.zarr", {"stage": "random_walk", "kind": "cam_scores", "source": cfg.affinity.source},
                             seeds.ids(), lambda out: RandomWalkWorker(cfg.model_dump(mode="json"), ds.root, seeds.path,
                                                                       ctx.input_dir("train_affinity"),
                                                                       ctx.input_dir("train_classifier"), out),
                             workers=1, desc="random_walk")
    sweep = evaluate_sweep(ds, store, cfg.cam.sweep, cfg.pseudo.workers, score_ids(ctx))
    return {"images": len(store), "resumed_from": done, "source": cfg.affinity.source,
            "miou": sweep["miou"], "threshold": sweep["threshold"], "sweep": sweep["sweep"]}
