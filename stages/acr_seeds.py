"""Stage ``make_seeds`` of ACR: gradient class localisation on the class-token ViT's attention (Table 5).

``acr.seed_mode``: ``grad`` — Eq. 7 over ``acr.seed_layers`` (``acr.seed_gradient``: ours mean_l ReLU(Σ_h ∂y/∂A_lh)
or the released Σ_l mean_h ReLU(∂y/∂A_lh)); ``grad_aff`` — refined with the patch-to-patch attention of
``acr.seed_aff_layers`` (Eq. 8, ``acr.seed_refinement``: M·Ā or the released Ā·M; ``models.acr.acr_seed_maps``);
``cam`` — the head applied to the patch tokens (``stages.make_seeds.image_cams``). Multi-scale + flip (``cam.scales``,
``cam.flip``; the released inference resizes every image to ``acr.seed_size`` = 384 first and upsamples the maps with
``acr.seed_align_corners``), normalised per class (``acr.seed_norm``: max or the released min-max), in
``seeds.zarr`` as every seed stage. With ``grad_aff`` the unrefined ``grad`` maps of the same pass also go to
``seeds_unrefined.zarr`` (ACR*, the labels of the offline affinity).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.acr import ACRConfig, acr_seed_maps
from models.cam_classifier import minmax_normalise_cams, multiscale_maps, normalise_cams
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore, open_for_stage
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import check_layers, fill_store, image_pool, labels_to_onehot_classes, trained_model
from stages.make_seeds import SEED_READS, SEEDS, SEEDS_UNREFINED, image_cams


def image_acr_seeds(model, image: np.ndarray, classes: list[int], scales: list[float], flip: bool,
                    acr: ACRConfig = ACRConfig(), runtime: Runtime = Runtime()) -> tuple[np.ndarray, np.ndarray]:
    """ACR seeds of one uint8 image: (grad maps, grad_aff maps), each K×H×W float32, normalised per class by
    ``acr.seed_norm`` (the model on ``runtime``; ``acr``'s seed keys choose the blocks and rules)."""
    if not classes:
        empty = np.zeros((0, *image.shape[:2]), np.float32)
        return empty, empty
    idx = [c - 1 for c in classes]

    def maps(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat(acr_seed_maps(model, batch, idx, acr.seed_layers, acr.seed_aff_layers, acr.seed_gradient,
                                       acr.seed_refinement), 1)

    # fp16 gradients without loss scaling can underflow: ACR's gradient seeds run in float32 then (bf16 keeps them)
    with runtime.autocast() if runtime.amp != "fp16" else contextlib.nullcontext():
        both = multiscale_maps(maps, runtime.to(normalise(image)), scales, flip, acr.seed_size, acr.seed_align_corners)
    norm = minmax_normalise_cams if acr.seed_norm == "minmax" else normalise_cams
    k = len(classes)
    return norm(both[:k]).cpu().numpy(), norm(both[k:]).cpu().numpy()


@dataclass
class ACRSeedWorker:
    config: ConfigView
    model: Path
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        cam, acr = self.config.cam, self.config.acr
        rt = Runtime.from_config(self.config)
        model = trained_model(self.model, rt)
        ds = VOCFolder(self.root)
        classes = labels_to_onehot_classes(ds.image_labels(image_id))
        image = ds.image(image_id)
        if acr.seed_mode == "cam":
            stores = {SEEDS: image_cams(model, image, classes, cam.scales, cam.flip, rt)}
        else:
            grad, grad_aff = image_acr_seeds(model, image, classes, cam.scales, cam.flip, acr, rt)
            stores = {SEEDS_UNREFINED: grad, SEEDS: grad_aff} if acr.seed_mode == "grad_aff" else {SEEDS: grad}
        # the unrefined store first: the seeds store is the one fill_store checks for resumption
        for name, maps in stores.items():
            LabelStore(self.out.parent / name).write(image_id, maps.astype(np.float16), {"classes": classes})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    if cfg.acr.seed_mode != "cam":
        # the worker runs in this process and reuses the model loaded here
        depth = trained_model(ctx.input("model")).num_layers
        check_layers(cfg.acr.seed_layers, depth, "acr.seed_layers")
        check_layers(cfg.acr.seed_aff_layers, depth, "acr.seed_aff_layers")
    # opened in every mode, so that maps of an earlier mode are never read as this run's (empty unless grad_aff)
    open_for_stage(ctx.output(SEEDS_UNREFINED), ctx.key, {"stage": ctx.stage.name, "kind": "grad_scores"})
    _, done = fill_store(ctx, SEEDS, {"kind": "cam_scores"}, ds.ids,
                         lambda out: ACRSeedWorker(cfg, ctx.input("model"), ds.root, out), image_pool(ctx, network=True))
    return {"images": len(ds), "resumed_from": done}


MAKE_ACR_SEEDS = Stage("make_seeds", run, reads=(*SEED_READS, "acr.seed_mode", "acr.seed_layers", "acr.seed_aff_layers", "acr.seed_gradient",
                              "acr.seed_refinement", "acr.seed_norm", "acr.seed_size", "acr.seed_align_corners"),
                       writes=(SEEDS, SEEDS_UNREFINED), inputs=("model",),
                       description="ACR's gradient class localisation on the attention (+ patch affinity) → seeds.zarr")
