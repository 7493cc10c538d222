"""Stage ``make_seeds``: multi-scale + flip CAMs of the trained classifier, stored as score maps.

Each image's entry in ``seeds.zarr`` is a K×H×W float16 array of the normalised CAMs of the K
classes in its image label (attribute ``classes``: their VOC indices).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from models.cam_classifier import multiscale_cams, normalise_cams
from pipeline.config import RunConfig
from pipeline.store import LabelStore
from pipeline.transforms import normalise
from pipeline.voc import VOCFolder
from stages.common import classifier_from_config, fill_store, labels_to_onehot_classes, trained_model


def image_cams(model, image: np.ndarray, classes: list[int], scales: list[float], flip: bool) -> np.ndarray:
    """Normalised CAMs (K×H×W float32) of ``classes`` (VOC indices) for one uint8 image."""
    if not classes:
        return np.zeros((0, *image.shape[:2]), np.float32)
    cams = multiscale_cams(model, normalise(image), scales, flip)
    cams = cams[[c - 1 for c in classes]]
    return normalise_cams(cams).numpy()


@dataclass
class SeedWorker:
    config: dict
    classifier_dir: Path
    root: Path
    out: Path

    @cached_property
    def cfg(self) -> RunConfig:
        return RunConfig.model_validate(self.config)

    def __call__(self, image_id: str) -> None:
        cfg = self.cfg
        model = trained_model(self.classifier_dir, lambda: classifier_from_config(cfg, for_inference=True))
        ds = VOCFolder(self.root)
        classes = labels_to_onehot_classes(ds.image_labels(image_id))
        cams = image_cams(model, ds.image(image_id), classes, cfg.cam.scales, cfg.cam.flip)
        LabelStore(self.out).write(image_id, cams.astype(np.float16), {"classes": classes})


def run(ctx) -> dict:
    cfg = ctx.config
    ds = ctx.run.dataset(cfg.data.label_split)
    # inference uses torch's threads in this process
    _, done = fill_store(ctx, "seeds.zarr", {"stage": "make_seeds", "kind": "cam_scores"}, ds.ids,
                         lambda out: SeedWorker(cfg.model_dump(mode="json"), ctx.input_dir("train_classifier"), ds.root, out),
                         workers=1, desc="make_seeds")
    return {"images": len(ds), "resumed_from": done}
