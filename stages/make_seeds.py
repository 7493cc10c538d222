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

from models.cam_classifier import multiscale_cams, normalise_cams
from models.protocols import ClassMapModel
from pipeline.runtime import Runtime
from pipeline.stage import ConfigView, Stage
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import fill_store, image_pool, labels_to_onehot_classes, trained_model

SEEDS = "seeds.zarr"
#: what every seed stage reads
SEED_READS = ("amp", "cam.scales", "cam.flip", "data.label_split", "data.max_images")


def image_cams(model: ClassMapModel, image: np.ndarray, classes: list[int], scales: list[float], flip: bool,
               runtime: Runtime = Runtime()) -> np.ndarray:
    """Normalised CAMs (K×H×W float32) of ``classes`` (VOC indices) for one uint8 image (the model on ``runtime``)."""
    if not classes:
        return np.zeros((0, *image.shape[:2]), np.float32)
    with runtime.autocast():
        cams = multiscale_cams(model, runtime.to(normalise(image)), scales, flip)
    cams = cams[[c - 1 for c in classes]]
    return normalise_cams(cams).cpu().numpy()


@dataclass
class SeedWorker:
    config: ConfigView
    model: Path
    root: Path
    out: Path

    def __call__(self, image_id: str) -> None:
        cam = self.config.cam
        ds = VOCFolder(self.root)
        classes = labels_to_onehot_classes(ds.image_labels(image_id))
        rt = Runtime.from_config(self.config)
        maps = image_cams(trained_model(self.model, rt), ds.image(image_id), classes, cam.scales, cam.flip, rt)
        LabelStore(self.out).write(image_id, maps.astype(np.float16), {"classes": classes})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.dataset(cfg.data.label_split)
    # inference uses torch's threads in this process
    _, done = fill_store(ctx, SEEDS, {"kind": "cam_scores"}, ds.ids,
                         lambda out: SeedWorker(cfg, ctx.input("model"), ds.root, out), image_pool(ctx, network=True))
    return {"images": len(ds), "resumed_from": done}


MAKE_SEEDS = Stage("make_seeds", run, reads=SEED_READS, writes=(SEEDS,), inputs=("model",),
                   description="multi-scale CAM of the trained classifier → seeds.zarr")
