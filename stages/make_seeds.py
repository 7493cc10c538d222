"""Stage ``make_seeds``: multi-scale + flip class maps of a trained classifier, stored as score maps.

Each image's entry in ``seeds.zarr`` is a K×H×W float16 array of the max-normalised maps of the K
classes in its image label (attribute ``classes``: their VOC indices). The model is whatever the
``model`` input's training stage trained, as long as it has ``class_maps`` (``models.protocols.ClassMapModel``):
the CAM classifier, AFA's network. ACR's gradient-attention seeds are ``stages/acr_seeds.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.cam_classifier import multiscale_cams, normalise_cams
from models.protocols import ClassMapModel
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, labels_to_onehot_classes, same_size_groups, trained_model

SEEDS = "seeds.zarr"
#: maps of the same pass before a method's own refinement (ACR*: grad before affinity; SWTformer V2: the CAM before R-CAM)
SEEDS_UNREFINED = "seeds_unrefined.zarr"
#: what every seed stage reads
SEED_READS = ("amp", "cam.scales", "cam.flip", "data.label_split", "data.max_images")


def batch_cams(model: ClassMapModel, images: list[np.ndarray], classes: list[list[int]], scales: list[float], flip: bool,
               runtime: Runtime = Runtime()) -> list[np.ndarray]:
    """Normalised CAMs (K_i×H×W float32) of each image's ``classes`` (VOC indices), for uint8 images of one
    size that go through the network together (the model on ``runtime``)."""
    out = [np.zeros((0, *im.shape[:2]), np.float32) for im in images]
    todo = [i for i, c in enumerate(classes) if c]
    if not todo:
        return out
    own = getattr(model, "seed_cams", None)  # a network's own multi-scale rule, normalised (AFA: models/afa.py)
    with runtime.autocast():
        x = runtime.to(torch.stack([normalise(images[i]) for i in todo]))
        cams = own(x, scales, flip) if own is not None else multiscale_cams(model, x, scales, flip)
    for i, c in zip(todo, cams):
        c = c[[k - 1 for k in classes[i]]]
        out[i] = (c.float() if own is not None else normalise_cams(c)).cpu().numpy()
    return out


def image_cams(model: ClassMapModel, image: np.ndarray, classes: list[int], scales: list[float], flip: bool,
               runtime: Runtime = Runtime()) -> np.ndarray:
    """Normalised CAMs (K×H×W float32) of ``classes`` (VOC indices) for one uint8 image (the model on ``runtime``)."""
    return batch_cams(model, [image], [classes], scales, flip, runtime)[0]


@dataclass
class SeedWorker:
    config: ConfigView
    model: Path
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        self.batch([image_id])

    def batch(self, image_ids: list[str]) -> list[None]:
        """The seeds of several images, those of one size in one forward pass (``ImagePool.batch`` on a GPU)."""
        cam = self.config.cam
        ds = VOCFolder(self.root)
        rt = Runtime.from_config(self.config)
        model = trained_model(self.model, rt)
        images = {i: ds.image(i) for i in image_ids}
        for group in same_size_groups(images):
            classes = [labels_to_onehot_classes(ds.image_labels(i)) for i in group]
            maps = batch_cams(model, [images[i] for i in group], classes, cam.scales, cam.flip, rt)
            for i, m, c in zip(group, maps, classes):
                LabelStore(self.out).write(i, m.astype(np.float16), {"classes": c})
        return [None] * len(image_ids)


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    # inference uses torch's threads in this process
    _, done = fill_store(ctx, SEEDS, {"kind": "cam_scores"}, ds.ids,
                         lambda out: SeedWorker(cfg, ctx.input("model"), ds.root, out), image_pool(ctx, network=True))
    return {"images": len(ds), "resumed_from": done}


MAKE_SEEDS = Stage("make_seeds", run, reads=SEED_READS, writes=(SEEDS,), inputs=("model",),
                   description="multi-scale CAM of the trained classifier → seeds.zarr")
