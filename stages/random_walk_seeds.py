"""Stage ``random_walk``: the seeds propagated over a semantic affinity (PSA/IRN random walk).

Per image: the affinity A over the feature grid — the trained AffinityNet's exp(−mean|f_i − f_j|)
within ``affinity.radius`` (``source = network``, the ``affinity`` input; a sparse matrix of those pairs), or the classifier's
patch-to-patch attention mean_l A_l[1:,1:], symmetrised (``source = attention``, the ``attention``
input: any ``models.protocols.AttentionModel``). The seeds (K×H×W) are resized to the grid, propagated
with ``stages.random_walk.propagate_maps`` (``affinity.beta``, ``affinity.log_t``), resized back and
max-normalised per class, as IRN does before its background threshold. The result goes to
``rw_seeds.zarr`` in the seeds' format, so ``make_pseudo_labels`` reads it like seeds, and the flow scores
it (and chooses its threshold) with the ``eval_seeds`` stage under another name (``eval_random_walk``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.cam_classifier import normalise_cams
from models.protocols import AttentionModel
from pipeline.errors import UserError
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import check_layers, fill_store, image_pool, trained_model
from stages.random_walk import propagate_maps

RW_SEEDS = "rw_seeds.zarr"


def attention_affinity(model: AttentionModel, image: torch.Tensor, layers: list[int] | None) -> tuple[torch.Tensor, tuple[int, int]]:
    """The classifier's patch-to-patch attention of one normalised 3×H×W image, symmetrised: (Ā + Āᵀ)/2, and its grid."""
    a = model.patch_attention(image[None], layers)[0]
    return (a + a.T) / 2, model.grid(image[None])


def random_walk_maps(seeds: np.ndarray, affinity: torch.Tensor, grid: tuple[int, int], beta: float, log_t: int) -> np.ndarray:
    """Propagate K×H×W seeds over an N×N affinity (dense or sparse) of an h×w grid; K×H×W, max-normalised per class."""
    if seeds.shape[0] == 0:
        return seeds.astype(np.float32)
    h, w = seeds.shape[-2:]
    small = F.interpolate(torch.from_numpy(seeds.astype(np.float32))[None].to(affinity.device), size=grid, mode="bilinear",
                          align_corners=False)
    affinity = affinity.float()
    walked = propagate_maps(small, affinity if affinity.is_sparse else affinity[None], beta=beta, log_t=log_t)
    up = F.interpolate(walked, size=(h, w), mode="bilinear", align_corners=False)[0]
    return normalise_cams(up.clamp_min(0)).cpu().numpy()


@dataclass
class RandomWalkWorker:
    config: ConfigView
    root: Path
    seeds: Path
    model: Path  # the AffinityNet (source network) or the classifier (source attention)
    out: Path

    @torch.no_grad()
    def __call__(self, image_id: str) -> None:
        a = self.config.affinity
        rt = Runtime.from_config(self.config)
        image = rt.to(normalise(VOCFolder(self.root).image(image_id)))
        model = trained_model(self.model, rt)
        with rt.autocast():  # the network in mixed precision, the walk in float32 on the same device
            if a.source == "network":
                aff, grid = model.sparse_affinity(image[None])
                aff = aff[0]
            else:
                aff, grid = attention_affinity(model, image, a.attention_layers)
        seeds = LabelStore(self.seeds)
        maps = random_walk_maps(seeds.read(image_id), aff, grid, a.beta, a.log_t)
        LabelStore(self.out).write(image_id, maps.astype(np.float16), {"classes": seeds.read_attrs(image_id)["classes"]})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    seeds = LabelStore(ctx.input("seeds"))
    model = ctx.input("affinity" if cfg.affinity.source == "network" else "attention")
    if cfg.affinity.source == "attention":
        # the worker runs in this process and reuses the model loaded here
        net = trained_model(model)
        if not isinstance(net, AttentionModel):
            raise UserError(f"affinity.source=attention: this flow's classifier ({type(net).__name__}) has no patch-to-patch "
                            "attention to walk on; set affinity.source=network")
        check_layers(cfg.affinity.attention_layers, net.num_layers, "affinity.attention_layers")
    store, done = fill_store(ctx, RW_SEEDS, {"kind": "cam_scores", "source": cfg.affinity.source}, seeds.ids(),
                             lambda out: RandomWalkWorker(cfg, ds.root, seeds.path, model, out), image_pool(ctx, network=True))
    return {"images": len(store), "resumed_from": done, "source": cfg.affinity.source}


RANDOM_WALK = Stage("random_walk", run,
                    reads=("amp", "affinity.source", "affinity.beta", "affinity.log_t", "affinity.attention_layers",
                           "data.label_split", "data.max_images"),
                    writes=(RW_SEEDS,), inputs=("seeds", "affinity", "attention"),
                    version=2,  # 2: the sweep moved to eval_random_walk
                    description="seeds propagated by the random walk over the affinity → rw_seeds.zarr")
