"""Stage ``make_seeds``: multi-scale + flip localisation maps of the trained classifier, stored as score maps.

Each image's entry in ``seeds.zarr`` is a K×H×W float16 array of the max-normalised maps of the K
classes in its image label (attribute ``classes``: their VOC indices). ``cam.mode`` picks the map:
``cam`` (class maps of the patch tokens), ``grad`` (ACR's gradient class localisation on the
class-to-patch attention) or ``grad_aff`` (grad refined by the patch-to-patch attention). With
``grad_aff`` the unrefined ``grad`` maps of the same pass also go to ``seeds_unrefined.zarr``
(ACR*, the labels of the offline affinity).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import torch

from models.acr import acr_seed_maps
from models.cam_classifier import multiscale_cams, multiscale_maps, normalise_cams
from pipeline.config import CamConfig
from pipeline.errors import UserError
from pipeline.store import LabelStore, open_for_stage
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import MODEL_BUILDERS, RunConfigWorker, check_layers, fill_store, labels_to_onehot_classes, model_source, trained_model


def image_cams(model, image: np.ndarray, classes: list[int], scales: list[float], flip: bool) -> np.ndarray:
    """Normalised CAMs (K×H×W float32) of ``classes`` (VOC indices) for one uint8 image."""
    if not classes:
        return np.zeros((0, *image.shape[:2]), np.float32)
    cams = multiscale_cams(model, normalise(image), scales, flip)
    cams = cams[[c - 1 for c in classes]]
    return normalise_cams(cams).numpy()


def image_acr_seeds(model, image: np.ndarray, classes: list[int], cam: CamConfig) -> tuple[np.ndarray, np.ndarray]:
    """ACR seeds of one uint8 image: (grad maps, grad_aff maps), each K×H×W float32, max-normalised."""
    if not classes:
        empty = np.zeros((0, *image.shape[:2]), np.float32)
        return empty, empty
    idx = [c - 1 for c in classes]
    both = multiscale_maps(lambda b: torch.cat(acr_seed_maps(model, b, idx, cam.layers, cam.aff_layers), 1),
                           normalise(image), cam.scales, cam.flip)
    k = len(classes)
    return normalise_cams(both[:k]).numpy(), normalise_cams(both[k:]).numpy()


def seed_stores(mode: str) -> list[str]:
    """The stores ``make_seeds`` writes in a mode (the first is the seeds)."""
    return ["seeds.zarr", "seeds_unrefined.zarr"] if mode == "grad_aff" else ["seeds.zarr"]


@dataclass
class SeedWorker(RunConfigWorker):
    model_stage: str  # the training stage whose model gives the maps (train_classifier, train_single_stage)
    model_dir: Path
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        cfg = self.cfg
        model = trained_model(self.model_dir, lambda: MODEL_BUILDERS[self.model_stage](cfg, for_inference=True))
        ds = VOCFolder(self.root)
        classes = labels_to_onehot_classes(ds.image_labels(image_id))
        image = ds.image(image_id)
        if cfg.cam.mode == "cam":
            maps = [image_cams(model, image, classes, cfg.cam.scales, cfg.cam.flip)]
        else:
            grad, grad_aff = image_acr_seeds(model, image, classes, cfg.cam)
            maps = [grad_aff, grad] if cfg.cam.mode == "grad_aff" else [grad]
        # the extra stores first: the seeds store is the one fill_store checks for resumption
        for name, m in reversed(list(zip(seed_stores(cfg.cam.mode), maps))):
            LabelStore(self.out.parent / name).write(image_id, m.astype(np.float16), {"classes": classes})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    source, build = model_source(ctx)
    if cfg.cam.mode != "cam":
        if cfg.model.arch != "vit_acr" or source != "train_classifier":
            raise UserError(f"cam.mode={cfg.cam.mode} needs the class-token classifier: set model.arch=vit_acr in acr_voc")
        # the worker runs in this process and reuses the model loaded here
        depth = trained_model(ctx.input_dir(source), lambda: build(cfg, for_inference=True)).num_layers
        check_layers(cfg.cam.layers, depth, "cam.layers")
        check_layers(cfg.cam.aff_layers, depth, "cam.aff_layers")
    for extra in seed_stores(cfg.cam.mode)[1:]:
        open_for_stage(ctx.dir / extra, ctx.key, {"stage": "make_seeds", "kind": "grad_scores"})
    # inference uses torch's threads in this process
    _, done = fill_store(ctx, "seeds.zarr", {"stage": "make_seeds", "kind": "cam_scores"}, ds.ids,
                         lambda out: SeedWorker(cfg.model_dump(mode="json"), source, ctx.input_dir(source), ds.root, out),
                         workers=1, desc="make_seeds")
    return {"images": len(ds), "resumed_from": done}
